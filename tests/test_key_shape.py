"""A key that could not go into a header is refused at `Session(...)`, naming `api_key`
and never echoing the key (#12 review F6); a key file's BOM is not part of the key, and a
key file that is not UTF-8 is a one-line usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from apimart_async import Session, ValidationError
from apimart_async.testing import EmulatorServer

from .conftest import KEY
from .test_key_secrecy import status, strict  # noqa: F401 - the fixture

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.mark.parametrize("key", ["sk-X\x1bsecretpart", "sk-\tsecretpart", "sk-\x7fsecretpart",
                                 "sk-\u20acsecretpart"])
def test_a_key_with_a_control_or_non_latin1_character_is_refused(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Session(key, base_url="http://127.0.0.1:1")
    assert caught.value.field == "api_key"
    assert "secretpart" not in str(caught.value)


def test_a_printable_latin1_key_is_taken() -> None:
    Session("sk-plain-\xe9-key", base_url="http://127.0.0.1:1")


async def test_a_key_file_with_a_bom_works(
    strict: EmulatorServer, tmp_path: Path  # noqa: F811
) -> None:
    (tmp_path / "key").write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\n")
    code, _out, err = await status(strict, "--api-key-file", str(tmp_path / "key"))
    assert code == 0, err


async def test_a_key_file_that_is_not_utf8_is_a_one_line_error(
    strict: EmulatorServer, tmp_path: Path  # noqa: F811
) -> None:
    (tmp_path / "key").write_bytes(b"sk-\xff\xfe-bad\n")
    code, _out, err = await status(strict, "--api-key-file", str(tmp_path / "key"))
    assert code == 2 and "api_key" in err and "UTF-8" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
