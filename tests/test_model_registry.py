"""The model registry: per-model checks at `VideoRequest`, typos, overrides, data: URIs."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest

from apimart_async import (
    ModelSpec,
    ValidationError,
    VideoRequest,
    get_model_spec,
    known_models,
    register_model,
    unregister_model,
)
from apimart_async.testing import EmulatorServer

from .conftest import session_for

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0" + bytes(64)
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(64)


def data_uri(media: str, data: bytes) -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = {name: get_model_spec(name) for name in known_models()}
    yield
    for name in known_models():
        unregister_model(name)
    for spec in saved.values():
        assert spec is not None
        register_model(spec)


def test_known_models_are_the_documented_ones() -> None:
    assert set(known_models()) >= {"sora-2", "sora-2-pro", "veo3", "Omni-Flash-Ext"}


@pytest.mark.parametrize("duration", [7, 999])
def test_sora_2_refuses_a_duration_it_does_not_take(duration: int) -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model="sora-2", duration=duration)
    assert info.value.field == "duration"
    message = str(info.value)
    assert repr(duration) in message and "'sora-2'" in message
    assert "allowed: 4, 5, 8, 10, 12, 15" in message


@pytest.mark.parametrize("duration", [4, 5, 8, 10, 12, 15])
def test_sora_2_takes_its_durations(duration: int) -> None:
    assert VideoRequest("a fox", duration=duration).duration == duration


def test_veo3_takes_a_square_ratio_sora_does_not() -> None:
    assert VideoRequest("a fox", model="veo3", aspect_ratio="1:1").aspect_ratio == "1:1"
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model="sora-2", aspect_ratio="1:1")
    assert info.value.field == "aspect_ratio"
    assert "'1:1'" in str(info.value) and "allowed: '16:9', '9:16'" in str(info.value)


@pytest.mark.parametrize(("typo", "meant"), [
    ("sora2", "sora-2"), ("SORA-2", "sora-2"), ("Sora-2-Pro", "sora-2-pro"), ("veo-3", "veo3"),
    ("omni_flash_ext", "Omni-Flash-Ext"),
])
def test_a_known_name_in_other_case_or_punctuation_is_refused_with_a_hint(
    typo: str, meant: str
) -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model=typo)
    assert info.value.field == "model"
    assert f"did you mean {meant!r}" in str(info.value)


def test_an_unknown_model_passes_through_untouched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="apimart_async")
    request = VideoRequest("a fox", model="kling-9", duration=7, aspect_ratio="4:3",
                           extra={"resolution": "8k"})
    assert request.to_body() == {"model": "kling-9", "prompt": "a fox", "duration": 7,
                                 "aspect_ratio": "4:3", "resolution": "8k"}
    assert any("'kling-9' is not known" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)


def test_a_close_but_different_name_passes_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="apimart_async")
    assert VideoRequest("a fox", model="sora-2-por").model == "sora-2-por"
    assert any("did you mean 'sora-2-pro'" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_an_unknown_model_still_gets_shape_checks() -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model="kling-9", aspect_ratio="wide")
    assert info.value.field == "aspect_ratio" and "'wide'" in str(info.value)


@pytest.mark.usefixtures("restore_registry")
def test_a_registered_spec_overrides_and_extends() -> None:
    with pytest.raises(ValueError, match="replace=True"):
        register_model(ModelSpec("sora-2"))
    register_model(ModelSpec("sora-2", durations=[7], aspect_ratios=["16:9"]), replace=True)
    assert VideoRequest("a fox", duration=7).duration == 7
    with pytest.raises(ValidationError, match="allowed: 7"):
        VideoRequest("a fox", duration=5)
    register_model(ModelSpec("kling-9", accepts_images=False,
                             extra_fields={"resolution": ["720p", "1080p"]}))
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model="kling-9", image_urls=["https://a/b.png"])
    assert info.value.field == "image_urls"
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model="kling-9", extra={"resolution": "8k"})
    assert info.value.field == "extra['resolution']"
    assert "allowed: '1080p', '720p'" in str(info.value)
    with pytest.raises(ValidationError, match=r"\{'w': 1\} is not supported"):
        VideoRequest("a fox", model="kling-9", extra={"resolution": {"w": 1}})
    # A typo-looking name is sent as given once registered.
    register_model(ModelSpec("sora2"))
    assert VideoRequest("a fox", model="sora2").model == "sora2"


@pytest.mark.parametrize(("media", "data"), [
    ("image/png", PNG), ("image/jpeg", JPEG), ("image/webp", WEBP), ("IMAGE/PNG", PNG),
])
def test_data_uris_of_documented_formats_are_accepted(media: str, data: bytes) -> None:
    uri = data_uri(media, data)
    assert VideoRequest("a fox", image_urls=[uri]).image_urls == (uri,)


@pytest.mark.parametrize(("uri", "words"), [
    (data_uri("image/gif", b"GIF89a" + bytes(10)), "'image/gif'"),
    (data_uri("text/plain", b"hello"), "'text/plain'"),
    ("data:image/png," + "x" * 10, "not base64"),
    ("data:image/png;base64,@@@notbase64", "does not decode"),
    ("data:image/png;base64,", "no data"),
    ("data:image/png;base64", "without a ','"),
    (data_uri("image/png", JPEG), "not that format"),
    (data_uri("image/webp", b"RIFF" + bytes(20)), "not that format"),
    (data_uri("image/png", b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024)), "10 MB"),
])
def test_bad_data_uris_are_refused_naming_the_entry(uri: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", image_urls=["https://ok/a.png", uri])
    assert info.value.field == "image_urls[1]"
    assert words in str(info.value)


@pytest.mark.anyio
async def test_veo3_square_with_a_data_uri_reaches_the_server(server: EmulatorServer) -> None:
    uri = data_uri("image/png", PNG)
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("a fox", model="veo3", aspect_ratio="1:1",
                                          image_urls=[uri]))
    body = server.emulator.tasks[sub.task_id].body
    assert body["aspect_ratio"] == "1:1" and tuple(body["image_urls"]) == (uri,)


@pytest.mark.parametrize("model", ["Omni-Flash-Ext", "kling-9"])
@pytest.mark.parametrize("ratio", ["abc", "16:", "0:9", "16:-9", "16x9", " 16:9"])
def test_an_aspect_ratio_is_w_h_whole_numbers_for_every_model(model: str, ratio: str) -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest("a fox", model=model, aspect_ratio=ratio)
    assert info.value.field == "aspect_ratio" and "'W:H'" in str(info.value)
    assert VideoRequest("a fox", model=model, aspect_ratio="21:9").aspect_ratio == "21:9"


@pytest.mark.parametrize("model", ["sora-2-pro", "veo3", "Omni-Flash-Ext"])
def test_a_resolution_has_the_shape_of_one(model: str) -> None:
    for good in ("720p", "1080p", "2160p", "4K"):
        assert VideoRequest("a fox", model=model, extra={"resolution": good}).extra
    for bad in ("9999p", "1080", "hd", "0p", 1080):
        with pytest.raises(ValidationError) as info:
            VideoRequest("a fox", model=model, extra={"resolution": bad})
        assert info.value.field == "extra['resolution']"
        assert "'720p'" in str(info.value) and repr(bad) in str(info.value)
    # A model without that field listed leaves it alone: its values are its own.
    assert VideoRequest("a fox", model="kling-9", extra={"resolution": "hd"}).extra


def test_a_data_uri_with_surrounding_whitespace_is_sent_without_it() -> None:
    uri = data_uri("image/png", PNG)
    assert VideoRequest("a fox", image_urls=[f"{uri}\n"]).image_urls == (uri,)
    assert VideoRequest("a fox", image_urls=[f"  {uri} \r\n"]).image_urls == (uri,)
    wrapped = uri[:40] + "\n" + uri[40:]
    with pytest.raises(ValidationError, match=r"image_urls\[0\].*contains whitespace"):
        VideoRequest("a fox", image_urls=[wrapped])
