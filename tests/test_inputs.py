"""Batch input files parse like a careful tool would (issue #12, item 5).

Every refusal is driven through the real command (`main()` in-process on a worker
thread, against the emulator on the test's loop) and checked against what the emulator
saw: nothing sent, no output folder. What is accepted is checked on `read_batch_file`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apimart_async._batch.inputs import BadLines, InputError, read_batch_file
from apimart_async.testing import EmulatorServer

from .conftest import cli

pytestmark = pytest.mark.anyio
MAX_DEPTH = 20  # the reader's nesting limit


@pytest.fixture(autouse=True)
def _key(cli_env: None) -> None:
    """The CLI reads the canary key from the environment, no base URL."""


def prompts(path: Path) -> list[str]:
    return [item.request.prompt for item in read_batch_file(path)]


def problems(path: Path) -> list[str]:
    """Every `FILE:LINE: ...` reported for `path`, without the file name."""
    with pytest.raises(InputError) as caught:
        read_batch_file(path)
    exc = caught.value
    errors = exc.errors if isinstance(exc, BadLines) else (exc,)
    return [str(error).removeprefix(f"{path}:") for error in errors]


# --- accepted: what a line holds stays one request --------------------------------


def test_txt_lines_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    # U+2028 (line separator), U+2029, U+001E-free: one line, one prompt, one paid task.
    path.write_bytes("a fox\u2028jumping\u2029high\nwaves\n".encode())
    assert prompts(path) == ["a fox\u2028jumping\u2029high", "waves"]


def test_crlf_lines_lose_their_carriage_return(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes(b"a fox\r\nwaves\r\n\r\n# note\r\n")
    assert prompts(tmp_path / "p.txt") == ["a fox", "waves"]
    (tmp_path / "p.jsonl").write_bytes(b'{"prompt": "a fox"}\r\n{"prompt": "waves"}\r\n')
    assert prompts(tmp_path / "p.jsonl") == ["a fox", "waves"]


@pytest.mark.parametrize(("name", "body"), [
    ("p.txt", b"a fox\nwaves\n"),
    ("p.jsonl", b'{"prompt": "a fox"}\n{"prompt": "waves"}\n'),
])
def test_a_utf8_bom_is_stripped_in_every_format(tmp_path: Path, name: str, body: bytes) -> None:
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body)
    assert prompts(tmp_path / name) == ["a fox", "waves"]


def test_tab_and_escaped_newline_are_allowed_in_prompts(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a fox\tin snow\n")
    assert prompts(tmp_path / "p.txt") == ["a fox\tin snow"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "shot 1: a fox\\nshot 2: snow\\t!"}\n')
    assert prompts(tmp_path / "p.jsonl") == ["shot 1: a fox\nshot 2: snow\t!"]


def test_nesting_up_to_the_limit_and_big_but_safe_integers_are_accepted(tmp_path: Path) -> None:
    deep = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)  # object + extra + lists
    (tmp_path / "p.jsonl").write_text(
        f'{{"prompt": "a", "extra": {{"seed": {2**53 - 1}, "x": {deep}}}}}\n'
    )
    [item] = read_batch_file(tmp_path / "p.jsonl")
    assert item.request.extra is not None and item.request.extra["seed"] == 2**53 - 1


# --- refused: each as FILE:LINE: field: problem ------------------------------------

BAD_JSONL = [
    ('{"prompt": "a", "prompt": "b"}', "prompt: duplicate key"),
    ('{"prompt": "a", "extra": {"seed": 1, "seed": 2}}', "extra['seed']: duplicate key"),
    ('{"prompt": "a", "duration": ' + "9" * 5001 + "}", "duration: integer out of range"),
    ('{"prompt": "a", "extra": {"seed": 18446744073709551616}}',
     "extra['seed']: integer out of range"),
    ('{"prompt": "a", "extra": {"seed": -9007199254740992}}',  # -(2**53)
     "extra['seed']: integer out of range"),
    ('{"prompt": "a", "extra": {"cfg": NaN}}', "extra['cfg']: not a finite number"),
    ('{"prompt": "a", "extra": {"cfg": 1e400}}', "extra['cfg']: not a finite number"),
    ('{"prompt": "a", "extra": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}",
     f"nested deeper than {MAX_DEPTH} levels"),
    ("[" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
    ('{"prompt": "a", "image_urls": {"https://x.test/a.png": 1}}',
     "image_urls: must be a JSON array of URLs, got an object"),
    ('{"prompt": "a", "image_urls": "https://x.test/a.png"}', "image_urls: must be a JSON array"),
    ('{"prompt": "a", "extra": ["resolution", "1080p"]}', "extra: must be a JSON object"),
    ('{"prompt": "a", "name": 7}', "name: must be"),
    ('{"prompt": 7}', "prompt: must be a string"),
    ('{"prompt": "a", "duration": "5"}', "duration: must be a whole number"),
    ('{"prompt": "red \\u001b[31malert"}', "prompt: control character U+001B"),
    ('{"prompt": "a\\u0000b"}', "prompt: control character U+0000"),
    ('{"prompt": "a\\rb"}', "prompt: control character U+000D"),
    ('{"prompt": "a\\u009bb"}', "prompt: control character U+009B"),
    ('{"prompt": "a", "model": "sora-2\\u001b[2J"}', "model: control character U+001B"),
    ('{"prompt": "a", "extra": {"style": "x\\u0007"}}', "extra['style']: control character"),
    ('{"prompt": "a", "image_urls": ["https://x.test/a\\u0000.png"]}',
     "image_urls[0]: control character U+0000"),
    ('{"prompt": "a\\ud800"}', "prompt: lone surrogate U+D800"),
    ('{"prompt": "a", "\\u001b[2J": 1}', "'\\x1b[2J': control character U+001B"),
    ('{"prompt": "a", "extra": {"k\\u0000": 1}}', "extra['k\\x00']: control character U+0000"),
]

BAD_TXT = [
    ("a fox\x1cjumping", "prompt: control character U+001C"),
    ("a fox\x85jumping", "prompt: control character U+0085"),
    ("a\x00b", "prompt: control character U+0000"),
    ("\x1b[2Jcleared", "prompt: control character U+001B"),
    ("a\x7fb", "prompt: control character U+007F"),
    ("a fox\rjumping", "prompt: control character U+000D"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_JSONL, ids=range(len(BAD_JSONL)))
async def test_bad_jsonl_line_is_named_exit_2_nothing_sent(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    line: str, problem: str,
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    status, out, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                                 "--base-url", server.base_url)
    assert status == 2 and out == ""
    assert "Traceback" not in err and "RecursionError" not in err
    assert "\x1b" not in err and "\x00" not in err  # never echoed to the terminal
    assert f"{path}:2: {problem}" in err, err[:500]
    assert len(err) < 2000  # the value is quoted briefly, never echoed whole
    assert sum(server.stats.requests.values()) == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("line", "problem"), BAD_TXT, ids=range(len(BAD_TXT)))
async def test_bad_txt_line_is_named_exit_2_nothing_sent(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    line: str, problem: str,
) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(("fine\n" + line + "\n").encode())
    status, out, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                                 "--base-url", server.base_url)
    assert status == 2 and out == ""
    assert f"{path}:2: {problem}" in err, err
    # The control character itself never reaches the terminal.
    assert "\x1b" not in err and "\x00" not in err and "\x85" not in err
    assert sum(server.stats.requests.values()) == 0
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_is_reported_with_its_line_among_the_others(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"fine\nbad \xff byte\nalso fine\ncut \xe2\x80\nnul\x00\n")
    assert problems(path) == [
        "2: not UTF-8 (byte 0xff at column 5)",
        "4: not UTF-8 (byte 0xe2 at column 5)",
        "5: prompt: control character U+0000 at character 4",
    ]
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes('{"prompt": "a"}\n'.encode("utf-16"))
    assert problems(utf16) == [" is UTF-16 text, not UTF-8: save it as UTF-8"]


async def test_every_new_problem_is_reported_at_once(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([
        '{"prompt": "fine"}',
        '{"prompt": "a", "prompt": "b"}',
        '{"prompt": "a", "duration": ' + "9" * 5001 + "}",
        "[" * 100_000,
        '{"prompt": "a", "image_urls": {"u": 1}}',
        '{"prompt": "a\\u001b"}',
    ]).encode() + b"\n\xff\n")
    status, out, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                                 "--base-url", server.base_url)
    assert status == 2 and out == ""
    assert "6 bad lines" in err and "Traceback" not in err
    assert [line.split(":")[1] for line in err.splitlines()[1:]] == ["2", "3", "4", "5", "6", "7"]
    assert sum(server.stats.requests.values()) == 0
    assert not (tmp_path / "out").exists()


# --- identical requests: said before sending; --skip-duplicates sends one ---------


async def test_identical_requests_are_announced_before_sending_and_each_billed(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\nwaves\na fox\n\na fox\n")
    status, _, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                               "--base-url", server.base_url)
    assert status == 0, err
    notices = [line for line in err.splitlines() if "same request as line" in line]
    assert notices == [
        f"{path}:3: same request as line 1: it will be generated (and billed) again"
        " (--skip-duplicates sends it once)",
        f"{path}:5: same request as line 1: it will be generated (and billed) again"
        " (--skip-duplicates sends it once)",
    ]
    assert server.stats.submissions == 4


async def test_skip_duplicates_sends_each_request_once(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a fox", "duration": 5}\n'
        '{"duration": 5, "prompt": "a fox"}\n'  # same request, keys in another order
        '{"prompt": "a fox", "duration": 10}\n'  # not the same request
        '{"prompt": "a fox", "duration": 5, "name": "take-2"}\n'  # same, named
    )
    status, out, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                                 "--base-url", server.base_url, "--skip-duplicates")
    assert status == 0, err
    notices = [line for line in err.splitlines() if "same request as line" in line]
    assert notices == [
        f"{path}:2: same request as line 1: skipped (--skip-duplicates)",
        f"{path}:4: same request as line 1: skipped (--skip-duplicates)",
    ]
    assert server.stats.submissions == 2
    assert out.splitlines()[0].startswith("2 items")


def test_duplicate_lines_are_listed_by_the_reader(tmp_path: Path) -> None:
    from apimart_async._batch.inputs import read_batch

    path = tmp_path / "p.txt"
    path.write_text("a\nb\na\nb\na\n")
    batch = read_batch(path)
    assert len(batch.items) == 5
    assert batch.duplicates == ((3, 1), (4, 2), (5, 1))
    assert [item.request.prompt for item in batch.select(skip_duplicates=True)[0]] == ["a", "b"]


def test_duplicate_notices_name_20_then_count(tmp_path: Path) -> None:
    from apimart_async._batch.inputs import read_batch

    path = tmp_path / "p.txt"
    path.write_text("a\n" * 26)
    notices = read_batch(path).duplicate_notices(skipping=True)
    assert len(notices) == 21
    assert notices[0] == f"{path}:2: same request as line 1: skipped (--skip-duplicates)"
    assert notices[19].startswith(f"{path}:21: ")
    assert notices[20] == "... and 5 more repeated requests"
