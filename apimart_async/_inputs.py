"""Reading batch input files: ``.jsonl`` (one request object a line) or ``.txt`` (prompts)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import ValidationError
from ._models import VideoRequest
from ._runner import BatchItem

__all__ = ["MAX_REPORTED", "BadLines", "InputError", "read_batch_file"]

#: Bad lines named one by one; beyond this many, only their count is given.
MAX_REPORTED = 20

_FIELDS = frozenset({"prompt", "model", "duration", "aspect_ratio", "image_urls", "extra", "name"})


class InputError(ValueError):
    """A problem in an input file, with the file and line it is on."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class BadLines(InputError):
    """Several bad lines in one input file, all found before anything was sent.

    `errors` holds one `InputError` per bad line, up to `MAX_REPORTED`; `total` counts
    them all. The message has a headline, then one ``FILE:LINE: field: problem`` a line.
    """

    def __init__(self, errors: Sequence[InputError], total: int) -> None:
        first = errors[0]
        self.errors = tuple(errors)
        self.total = total
        lines = [f"{total} bad lines in {first.path}, nothing was sent:"]
        lines += [str(error) for error in errors]
        if total > len(errors):
            lines.append(f"... and {total - len(errors)} more")
        ValueError.__init__(self, "\n".join(lines))
        self.path = first.path
        self.line = first.line


def _item(data: Any, defaults: Mapping[str, Any], path: Path, line: int) -> BatchItem:
    if not isinstance(data, dict):
        raise InputError(path, line, f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InputError(
            path, line,
            f"{unknown[0]}: unknown field (model-specific fields go in \"extra\")",
        )
    if "prompt" not in data:
        raise InputError(path, line, "prompt: is required")
    fields = {k: v for k, v in defaults.items() if v is not None}
    fields.update({k: v for k, v in data.items() if k != "name"})
    try:
        prompt = fields.pop("prompt")
        return BatchItem(request=VideoRequest(prompt, **fields), name=data.get("name"))
    except ValidationError as exc:
        raise InputError(path, line, str(exc)) from None
    except TypeError as exc:
        raise InputError(path, line, str(exc)) from None


def read_batch_file(
    path: Path, defaults: Mapping[str, Any] | None = None, *, lines: list[int] | None = None
) -> list[BatchItem]:
    """Every item of a batch file, all validated.

    A bad line raises `InputError`; several raise `BadLines`, naming every one (up to
    `MAX_REPORTED`), so one run shows the user everything to fix.

    `defaults` (model, duration, aspect_ratio) fill fields a line leaves out. `lines`,
    if given, receives each item's line number, so later errors can name FILE:LINE.
    """
    defaults = dict(defaults or {})
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".txt"):
        raise InputError(path, None, "must end in .jsonl (request objects) or .txt (prompts)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "is not UTF-8 text") from None
    items: list[BatchItem] = []
    names: dict[str, int] = {}
    errors: list[InputError] = []
    bad = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(_line_item(line, suffix, defaults, path, number, names))
            if lines is not None:
                lines.append(number)
        except InputError as exc:
            bad += 1
            if len(errors) < MAX_REPORTED:
                errors.append(exc)
    if bad == 1:
        raise errors[0]
    if bad:
        raise BadLines(errors, bad)
    if not items:
        raise InputError(path, None, "has no requests")
    return items


def _line_item(
    line: str, suffix: str, defaults: Mapping[str, Any], path: Path, number: int,
    names: dict[str, int],
) -> BatchItem:
    if suffix == ".txt":
        return _item({"prompt": line}, defaults, path, number)
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, number, f"not valid JSON ({exc.msg})") from None
    item = _item(data, defaults, path, number)
    if item.name is not None:
        if item.name in names:
            raise InputError(
                path, number, f"name: {item.name!r} already used on line {names[item.name]}"
            )
        names[item.name] = number
    return item
