"""VideoRequest validation and Task/TaskStatus behaviour (pure)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from apimart_async import TaskStatus, ValidationError, VideoRequest


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"prompt": "x" * 32_001}, "prompt", "the limit is 32,000"),
        ({"prompt": 5}, "prompt", "string"),
        ({"prompt": "x", "model": ""}, "model", "non-empty"),
        ({"prompt": "x", "duration": 0}, "duration", "positive"),
        ({"prompt": "x", "duration": -5}, "duration", "positive"),
        ({"prompt": "x", "duration": 5.5}, "duration", "whole"),
        ({"prompt": "x", "duration": True}, "duration", "whole"),
        ({"prompt": "x", "duration": "5"}, "duration", "whole"),
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio", "16:9"),
        ({"prompt": "x", "image_urls": "https://a/b.png"}, "image_urls", "list"),
        ({"prompt": "x", "image_urls": ["ftp://a/b.png"]}, "image_urls[0]", "http"),
        ({"prompt": "x", "image_urls": ["https://ok/a.png", "/rel.png"]}, "image_urls[1]", "absolute"),
        ({"prompt": "x", "image_urls": [3]}, "image_urls[0]", "URL string"),
        ({"prompt": "x", "image_urls": {"https://a/b.png": 1}}, "image_urls", "not a dict"),
        ({"prompt": "x", "image_urls": {"https://a/b.png"}}, "image_urls", "not a set"),
        ({"prompt": "x", "image_urls": b"https://a/b.png"}, "image_urls", "list"),
        ({"prompt": "x", "extra": {"prompt": "y"}}, "extra['prompt']", "duplicates"),
        ({"prompt": "x", "extra": {"a": object()}}, "extra", "JSON"),
        ({"prompt": "x", "extra": [1]}, "extra", "mapping"),
    ],
)
def test_bad_requests_name_the_field(kwargs: dict[str, Any], field: str, words: str) -> None:
    prompt = kwargs.pop("prompt")
    with pytest.raises(ValidationError) as info:
        VideoRequest(prompt, **kwargs)
    assert info.value.field == field
    assert words in info.value.problem
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


def test_body_carries_fields_and_extra() -> None:
    req = VideoRequest(
        "a fox", model="sora-2-pro", duration=10, aspect_ratio="9:16",
        image_urls=["https://img.example/a.png"], extra={"resolution": "1080p"},
    )
    assert req.to_body() == {
        "resolution": "1080p", "model": "sora-2-pro", "prompt": "a fox", "duration": 10,
        "aspect_ratio": "9:16", "image_urls": ["https://img.example/a.png"],
    }
    assert VideoRequest("x").to_body() == {"model": "sora-2", "prompt": "x"}


def test_request_is_immutable_and_hashable() -> None:
    extra = {"resolution": "720p"}
    req = VideoRequest("x", extra=extra)
    extra["resolution"] = "changed"
    assert req.extra is not None and req.extra["resolution"] == "720p"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        req.prompt = "y"  # type: ignore[misc]
    assert hash(req) == hash(VideoRequest("x", extra={"resolution": "720p"}))
    assert req == VideoRequest("x", extra={"resolution": "720p"})


def test_status_parse_and_terminal() -> None:
    assert TaskStatus.parse("completed") is TaskStatus.COMPLETED
    assert TaskStatus.parse("PROCESSING") is TaskStatus.PROCESSING
    assert TaskStatus.parse("rendering") is TaskStatus.UNKNOWN
    assert not TaskStatus.UNKNOWN.is_terminal
    assert {s for s in TaskStatus if s.is_terminal} == {
        TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
    }
    assert TaskStatus.COMPLETED == "completed"


def test_a_prompt_at_the_limit_is_accepted() -> None:
    assert len(VideoRequest("x" * 32_000).prompt) == 32_000
