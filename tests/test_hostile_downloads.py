"""Downloads trust nothing (#12 item 1): a hostile file host, a hostile task answer, a
stale partial. Each fault is the emulator's (`Fault.gzip`, `endless`, `drip`, `html`,
`cut_unframed`, `result_url`, `answer_id`), over real sockets; each test has a timeout
so that a hang is a failure, not a stuck run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import pytest

from apimart_async import (
    DownloadError,
    DownloadPolicy,
    RetryPolicy,
    Session,
    Task,
    ValidationError,
    VideoRequest,
)
from apimart_async.testing import EmulatorServer, Fault, video_bytes

from .conftest import KEY, session_for
from .test_cli import run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

SIZE = 64 * 1024
# Real seconds after which a download that should have been given up on is a hang
# (pytest-timeout's signal does not interrupt the event loop here).
HANG = 10.0


async def completed(s: Session, prompt: str = "a fox") -> Task:
    return await s.wait(await s.submit(VideoRequest(prompt)))


def on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- a partial is resumed only when it provably belongs to this task and link ---------


async def test_a_stale_part_of_another_task_is_never_spliced(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        fox, owl = await completed(s, "a fox"), await completed(s, "an owl")
        dest = tmp_path / "owl.mp4"
        # Left by a kill -9 of a download of another task into the same name.
        (tmp_path / ".owl.mp4.part").write_bytes(video_bytes(fox.id, SIZE)[: SIZE // 2])
        result = await s.download(owl, dest)
    assert dest.read_bytes() == video_bytes(owl.id, SIZE)
    assert result.sha256 == hashlib.sha256(video_bytes(owl.id, SIZE)).hexdigest()
    assert server.stats.range_requests == 0
    assert on_disk(tmp_path) == ["owl.mp4"]


async def test_a_part_whose_record_names_another_task_starts_over(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        fox, owl = await completed(s, "a fox"), await completed(s, "an owl")
        # A fox download cut half-way leaves its part and the record of whose it is.
        server.emulator.inject("download", Fault.cut(0.5), Fault.http(404))
        with pytest.raises(DownloadError):
            await s.download(fox, tmp_path / "v.mp4")
        record = json.loads((tmp_path / ".v.mp4.part.meta").read_text())
        assert record["task_id"] == fox.id and record["validator"]
        await s.download(owl, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == video_bytes(owl.id, SIZE)
    assert on_disk(tmp_path) == ["v.mp4"]


async def test_a_part_that_is_this_tasks_resumes_across_sessions(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # The control for the two tests above: the proof is not so strict that nothing resumes.
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.cut(0.5), Fault.http(404))
        with pytest.raises(DownloadError):
            await s.download(fox, tmp_path / "fox.mp4")
    async with session_for(server) as s:
        result = await s.download(fox.id, tmp_path / "fox.mp4")
    assert result.resumed == 1 and server.stats.if_range_headers[-1] is not None
    assert (tmp_path / "fox.mp4").read_bytes() == video_bytes(fox.id, SIZE)
    assert on_disk(tmp_path) == ["fox.mp4"]


# -- no transparent inflation, bounded size, bounded time -----------------------------


@pytest.mark.parametrize("bomb", [False, True])
async def test_a_gzip_encoded_body_is_refused_not_inflated(
    server: EmulatorServer, tmp_path: Path, bomb: bool
) -> None:
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.gzip(bomb=bomb))
        with pytest.raises(DownloadError, match="'gzip'-encoded"):
            await s.download(fox, tmp_path / "fox.mp4")
    assert on_disk(tmp_path) == []


async def test_downloads_ask_for_the_bytes_as_stored(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        await s.download(await completed(s), tmp_path / "fox.mp4")
    [record] = [r for r in server.emulator.request_log if r.route == "download"]
    assert record.accept_encoding == "identity"


async def test_an_endless_body_is_stopped_at_the_size_cap(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server, downloads=DownloadPolicy(max_bytes=1 << 20)) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.endless())
        with pytest.raises(DownloadError, match="more than max_bytes"), anyio.fail_after(HANG):
                await s.download(fox, tmp_path / "fox.mp4")
    assert on_disk(tmp_path) == []  # the garbage is not kept as a partial either


async def test_an_announced_length_over_the_cap_is_refused_before_the_body(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server, downloads=DownloadPolicy(max_bytes=SIZE - 1)) as s:
        fox = await completed(s)
        with pytest.raises(DownloadError, match="announced 65,536 bytes"):
            await s.download(fox, tmp_path / "fox.mp4")
    assert on_disk(tmp_path) == []


async def test_a_dripping_host_is_given_up_on_by_the_low_speed_limit(
    server: EmulatorServer, tmp_path: Path
) -> None:
    policy = DownloadPolicy(low_speed_limit=100, low_speed_time=5.0)
    async with session_for(server, downloads=policy, retry=RetryPolicy(max_attempts=2)) as s:
        fox = await completed(s)
        # A byte every half API second (10 ms of real time at the tests' speed).
        server.emulator.inject("download", Fault.drip(0.5), Fault.drip(0.5))
        with pytest.raises(DownloadError, match="slower than 100 bytes/s"), \
                anyio.fail_after(HANG):
                await s.download(fox, tmp_path / "fox.mp4")
    assert not (tmp_path / "fox.mp4").exists()


async def test_one_drip_is_retried_and_the_file_completes(
    server: EmulatorServer, tmp_path: Path
) -> None:
    policy = DownloadPolicy(low_speed_limit=100, low_speed_time=5.0)
    async with session_for(server, downloads=policy) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.drip(0.5))
        await s.download(fox, tmp_path / "fox.mp4")
    assert (tmp_path / "fox.mp4").read_bytes() == video_bytes(fox.id, SIZE)


async def test_a_download_ends_at_its_deadline(server: EmulatorServer, tmp_path: Path) -> None:
    # Fast enough for the low-speed limit, too slow for the deadline.
    policy = DownloadPolicy(low_speed_limit=1, deadline=5.0)
    async with session_for(server, downloads=policy) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.drip(0.5))
        with pytest.raises(DownloadError, match="deadline of 5 s"), anyio.fail_after(HANG):
                await s.download(fox, tmp_path / "fox.mp4")
    assert not (tmp_path / "fox.mp4").exists()


# -- completeness must be provable; the body must be media ---------------------------


async def test_a_body_cut_without_length_is_not_taken_as_complete(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server, retry=RetryPolicy(max_attempts=2)) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.cut_unframed(0.5), Fault.cut_unframed(0.5))
        with pytest.raises(DownloadError, match="no length and no framing"):
            await s.download(fox, tmp_path / "fox.mp4")
    assert not (tmp_path / "fox.mp4").exists()


async def test_one_unframed_answer_is_retried_to_a_whole_file(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.cut_unframed(0.5))
        await s.download(fox, tmp_path / "fox.mp4")
    assert (tmp_path / "fox.mp4").read_bytes() == video_bytes(fox.id, SIZE)


async def test_an_html_page_under_200_is_an_error_not_a_video(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.html(200))
        with pytest.raises(DownloadError, match="sent an HTML/XML page, not a video"):
            await s.download(fox, tmp_path / "fox.mp4")
    assert on_disk(tmp_path) == []


# -- where a download may go, and where its file may be written -----------------------


@pytest.mark.parametrize(("url", "why"), [
    ("file:///etc/passwd", "scheme 'file'"),
    ("http://169.254.169.254/latest/meta-data/", "non-public address"),
    ("https://[fe80::1]/v.mp4", "non-public address"),
    ("https://10.0.0.7/v.mp4", "non-public address"),
    ("http://files.example/v.mp4", "plain http"),
    ("https://user:pw@files.example/v.mp4", "credentials"),
    # Names, not literals: 0.0.0.0 (this host) and 169.254.169.254 (cloud metadata) in
    # the hex forms the resolver takes; only the resolved address tells.
    ("https://0x0/v.mp4", "resolves only to non-public addresses"),
    ("https://0xa9fea9fe/latest/meta-data/", "resolves only to non-public addresses"),
    # IPv6 literals that carry the metadata address to an IPv4 gateway.
    ("https://[64:ff9b::a9fe:a9fe]/x", "non-public address"),
    ("https://[2002:a9fe:a9fe::]/x", "non-public address"),
    ("https://[2001:0:4136:e378:8000:63bf:5601:5601]/x", "non-public address"),
])
async def test_a_result_link_to_a_forbidden_target_is_never_fetched(
    server: EmulatorServer, tmp_path: Path, url: str, why: str
) -> None:
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("task", Fault.result_url(url))
        with pytest.raises(DownloadError, match=why):
            await s.download(fox.id, tmp_path)
    assert on_disk(tmp_path) == []


async def test_a_result_link_holding_the_key_is_scrubbed_and_never_fetched(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # A broken or hostile API echoing the key into the result link: the Task never
    # holds it (repr, CLI, journal), and no host is sent a link that held it.
    async with session_for(server) as s:
        fox = await completed(s)
        echoed = f"{fox.outputs[0].url}?k={KEY}&again={KEY}"
        for _ in range(2):
            server.emulator.inject("task", Fault.result_url(echoed))
        task = await s.get_task(fox.id)
        assert KEY not in repr(task) and KEY not in repr(task.video_urls)
        assert task.outputs[0].url.endswith("?k=[redacted]&again=[redacted]")
        fetched = server.stats.downloads
        with pytest.raises(DownloadError, match="held the API key") as given:
            await s.download(task, tmp_path)
        with pytest.raises(DownloadError, match="held the API key") as by_id:
            await s.download(fox.id, tmp_path)  # (its answer read afresh: the same)
    assert KEY not in str(given.value) + str(by_id.value)
    assert server.stats.downloads == fetched and server.stats.credential_leaks == 0
    assert on_disk(tmp_path) == []


async def test_a_redirect_to_a_forbidden_target_is_not_followed(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("download", Fault.redirect("http://169.254.169.254/x", 302))
        with pytest.raises(DownloadError, match="non-public address"):
            await s.download(fox, tmp_path / "fox.mp4")


async def test_the_allow_list_of_file_hosts_is_enforced(
    server: EmulatorServer, tmp_path: Path
) -> None:
    policy = DownloadPolicy(allowed_hosts=["cdn.apimart.example"])
    async with session_for(server, downloads=policy) as s:
        fox = await completed(s)
        with pytest.raises(DownloadError, match="not in allowed_hosts"):
            await s.download(fox, tmp_path / "fox.mp4")
    assert server.stats.requests["download"] == 0
    async with session_for(server, downloads=DownloadPolicy(allowed_hosts=["127.0.0.1"])) as s:
        await s.download(fox, tmp_path / "fox.mp4")


async def test_the_answers_id_never_names_the_file(
    server: EmulatorServer, tmp_path: Path
) -> None:
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    async with session_for(server) as s:
        fox = await completed(s)
        server.emulator.inject("task", Fault.answer_id("../../x"))
        result = await s.download(fox.id, out)
    assert result.path == out / f"{fox.id}.mp4"
    assert on_disk(out) == [f"{fox.id}.mp4"]
    assert not list(tmp_path.rglob("x.mp4"))


async def test_a_task_id_that_is_not_a_plain_name_is_refused(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match="task_id"):
            await s.download("../../x", tmp_path)
    assert server.stats.requests["task"] == 0


def test_download_policy_values_are_checked() -> None:
    for bad in ({"max_bytes": 0}, {"low_speed_time": -1.0}, {"deadline": float("nan")},
                {"allowed_hosts": "cdn.example"}):
        with pytest.raises(ValidationError):
            DownloadPolicy(**bad)  # type: ignore[arg-type]


async def test_the_download_command_writes_inside_out_whatever_the_answers_id(
    server: EmulatorServer, tmp_path: Path
) -> None:
    out = tmp_path / "a" / "b" / "out"
    async with session_for(server) as s:
        fox = await completed(s)
    server.emulator.inject("task", Fault.answer_id("../../x"))
    result = await run_cli("download", fox.id, "--out", str(out),
                           "--base-url", server.base_url, APIMART_API_KEY=KEY)
    assert result.returncode == 0, result.stderr
    assert on_disk(out) == [f"{fox.id}.mp4"]
    assert not list(tmp_path.rglob("x.mp4"))


async def test_the_file_hosts_resolver_keeps_public_and_loopback_addresses_only() -> None:
    # A name answered with a mix: the connection may use only the addresses a link
    # could name itself; a name answered with none of those is refused by name.
    import socket

    import aiohttp.abc

    from apimart_async._io.http import NonPublicAddressError, PublicResolver

    class Answers(aiohttp.abc.AbstractResolver):
        def __init__(self, addresses: list[str]) -> None:
            self.addresses = addresses

        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET,
                          ) -> list[aiohttp.abc.ResolveResult]:
            return [{"hostname": host, "host": a, "port": port, "family": family,
                     "proto": 0, "flags": 0} for a in self.addresses]

        async def close(self) -> None:
            pass

    mixed = PublicResolver(Answers(["10.1.2.3", "93.184.216.34", "fe80::1%eth0", "::1",
                                    "169.254.169.254"]))
    kept = await mixed.resolve("files.example", 443)
    assert [entry["host"] for entry in kept] == ["93.184.216.34", "::1"]
    with pytest.raises(NonPublicAddressError, match=r"non-public addresses \(0\.0\.0\.0, "
                                                   r"10\.0\.0\.1\)"):
        await PublicResolver(Answers(["10.0.0.1", "0.0.0.0"])).resolve("inside.example", 443)
