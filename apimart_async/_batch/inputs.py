"""Reading batch input files: ``.jsonl`` (one request object a line) or ``.txt`` (prompts).

Every line becomes one paid task, so the reader is strict where a lenient one would
bill for a surprise: lines end at ``\n`` (or ``\r\n``) only, never at the other
characters `str.splitlines` honours; JSON keeps no duplicate key, no integer a
JavaScript reader would round, no non-finite number, no deep nesting; strings hold no
control character but tab (and newline, written ``\n``, inside a JSON string).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._core.errors import ValidationError
from .._core.models import VideoRequest
from .journal import request_json
from .runner import BatchItem

__all__ = [
    "MAX_DEPTH", "MAX_REPORTED", "BadLines", "BatchFile", "InputError", "read_batch",
    "read_batch_file",
]

#: Bad lines named one by one; beyond this many, only their count is given.
MAX_REPORTED = 20
#: Deepest nesting of arrays and objects a ``.jsonl`` line may have (a request needs 3).
MAX_DEPTH = 20
# Integers beyond 2**53 - 1 are rounded by JavaScript and many JSON tools (RFC 7493).
_SAFE_INT = 2**53 - 1
# C0, DEL and C1 control characters, except tab and newline: NUL truncates in C
# consumers, ESC/CSI drive terminals, \r hides text, \x1c-\x1f and \x85 are line
# breaks to `str.splitlines`.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Trimmed from both ends of a line: Unicode blanks, but no control character, which
# is refused rather than dropped.
_BLANKS = "".join(
    c for c in map(chr, range(0x3001)) if c.isspace() and not _CONTROL.match(c) and c != "\n"
)
_BOM = b"\xef\xbb\xbf"
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')

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


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as parsed: its pairs in order, duplicates kept, to be checked."""


class _OutOfRange:
    """An integer literal too long to convert (Python refuses over 4,300 digits)."""


_TOO_LONG = _OutOfRange()


def _parse_int(text: str) -> int | _OutOfRange:
    # 2**53 - 1 has 16 digits: anything longer is out of range, and is never handed to
    # int(), which raises ValueError (not JSONDecodeError) beyond its digit limit.
    return _TOO_LONG if len(text.lstrip("-")) > 16 else int(text)


def _json_type(value: object) -> str:
    if isinstance(value, (dict, _Pairs)):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"


def _check_text(field: str, text: str) -> None:
    """Refuse control characters (but tab and newline) and lone surrogates in a string."""
    for pattern, what in ((_CONTROL, "control character"), (_SURROGATE, "lone surrogate")):
        found = pattern.search(text)
        if found:
            raise ValidationError(
                field, f"{what} U+{ord(found.group()):04X} at character {found.start() + 1}"
            )


def _checked(value: Any, field: str) -> Any:
    """`value` as parsed, with objects made dicts, every part checked; `field` names it."""
    if isinstance(value, _Pairs):
        out: dict[str, Any] = {}
        for key, item in value:
            # repr() keeps a hostile key from reaching the terminal as it is.
            name = key if key.isidentifier() else repr(key)
            sub = f"{field}[{key!r}]" if field else name
            _check_text(sub, key)
            if key in out:
                raise ValidationError(
                    sub, "duplicate key (JSON readers keep only one: give it once)"
                )
            out[key] = _checked(item, sub)
        return out
    if isinstance(value, list):
        return [_checked(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, str):
        _check_text(field, value)
    elif value is _TOO_LONG or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INT
    ):
        raise ValidationError(field, f"integer out of range (at most {_SAFE_INT} either way)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(field, "not a finite number (NaN, Infinity or too large)")
    return value


def _too_deep(line: str) -> bool:
    """True if arrays and objects nest deeper than `MAX_DEPTH` (checked before parsing:
    the parser would recurse once per level)."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, skip = 0, False, -1
    for found in _JSON_SPECIAL.finditer(line):
        at, char = found.start(), found.group()
        if at == skip:
            continue
        if in_string:
            if char == "\\":
                skip = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _parse_json(line: str, path: Path, number: int) -> Any:
    if _too_deep(line):
        raise InputError(path, number, f"nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(line, object_pairs_hook=_Pairs, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise InputError(path, number, f"not valid JSON ({exc.msg})") from None
    try:
        return _checked(data, "")
    except ValidationError as exc:
        raise InputError(path, number, str(exc)) from None


def _check_json_types(data: Mapping[str, Any]) -> None:
    """Shapes `VideoRequest` would coerce: an object given as `image_urls` would become
    the list of its keys."""
    urls = data.get("image_urls")
    if urls is not None and not isinstance(urls, list):
        raise ValidationError("image_urls", f"must be a JSON array of URLs, got {_json_type(urls)}")
    extra = data.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise ValidationError("extra", f"must be a JSON object, got {_json_type(extra)}")


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
        _check_json_types(data)
        prompt = fields.pop("prompt")
        return BatchItem(request=VideoRequest(prompt, **fields), name=data.get("name"))
    except ValidationError as exc:
        raise InputError(path, line, str(exc)) from None
    except TypeError as exc:
        raise InputError(path, line, str(exc)) from None


@attrs.frozen(kw_only=True)
class BatchFile:
    """A batch file, read and validated: its items, the line of each, and its repeats.

    `duplicates` holds ``(line, first_line)`` for every item whose request (the body
    sent: prompt, model, duration, ...) is the same as an earlier line's. Each is a
    task of its own, billed again, unless the caller sends only the first of each
    (`select(skip_duplicates=True)`).
    """

    path: Path
    items: tuple[BatchItem, ...]
    lines: tuple[int, ...]
    duplicates: tuple[tuple[int, int], ...]

    def select(self, *, skip_duplicates: bool) -> tuple[list[BatchItem], list[int]]:
        """The items to send and the line of each, without the repeats if asked."""
        repeats = {line for line, _ in self.duplicates} if skip_duplicates else set()
        kept = [(item, line) for item, line in zip(self.items, self.lines, strict=True)
                if line not in repeats]
        return [item for item, _ in kept], [line for _, line in kept]

    def duplicate_notices(self, *, skipping: bool) -> list[str]:
        """One line per repeated request (up to `MAX_REPORTED`, then a count)."""
        what = ("skipped (--skip-duplicates)" if skipping else
                "it will be generated (and billed) again (--skip-duplicates sends it once)")
        notices = [
            f"{self.path}:{line}: same request as line {first}: {what}"
            for line, first in self.duplicates[:MAX_REPORTED]
        ]
        if len(self.duplicates) > MAX_REPORTED:
            notices.append(f"... and {len(self.duplicates) - MAX_REPORTED} more repeated requests")
        return notices


def read_batch_file(path: Path, defaults: Mapping[str, Any] | None = None) -> list[BatchItem]:
    """Every item of a batch file, all validated (see `read_batch`)."""
    return list(read_batch(path, defaults).items)


def read_batch(path: Path, defaults: Mapping[str, Any] | None = None) -> BatchFile:
    """Read and validate a batch file: every item, and which lines repeat a request.

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
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(path, None, "is UTF-16 text, not UTF-8: save it as UTF-8")
    data = data.removeprefix(_BOM)
    items: list[BatchItem] = []
    lines: list[int] = []
    names: dict[str, int] = {}
    errors: list[InputError] = []
    bad = 0
    # Lines end at \n only: str.splitlines() would also break at \x1c-\x1e, \x85,
    # U+2028 ..., turning one line into several paid tasks.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = _decode(raw, path, number).strip(_BLANKS)
            if not line or line.startswith("#"):
                continue
            items.append(_line_item(line, suffix, defaults, path, number, names))
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
    first: dict[str, int] = {}
    duplicates = []
    for item, number in zip(items, lines, strict=True):
        body = request_json(item.request.to_body())
        if body in first:
            duplicates.append((number, first[body]))
        else:
            first[body] = number
    return BatchFile(path=path, items=tuple(items), lines=tuple(lines),
                     duplicates=tuple(duplicates))


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            path, number, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None


def _line_item(
    line: str, suffix: str, defaults: Mapping[str, Any], path: Path, number: int,
    names: dict[str, int],
) -> BatchItem:
    if suffix == ".txt":
        try:
            _check_text("prompt", line)
        except ValidationError as exc:
            raise InputError(path, number, str(exc)) from None
        return _item({"prompt": line}, defaults, path, number)
    item = _item(_parse_json(line, path, number), defaults, path, number)
    if item.name is not None:
        if item.name in names:
            raise InputError(
                path, number, f"name: {item.name!r} already used on line {names[item.name]}"
            )
        names[item.name] = number
    return item
