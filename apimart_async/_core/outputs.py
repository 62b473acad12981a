"""Where a task's outputs go on disk: the naming scheme, pure.

A task's first output goes to the path asked for; output N (counted from 1, videos
first, then images, as in `Task.outputs`) goes beside it as ``STEM-N.EXT``, its
extension taken from its link (``.mp4``, ``.png``...), else ``.mp4`` for a video and
``.png`` for an image. So a task with two videos and an image saved as ``fox.mp4``
gives ``fox.mp4``, ``fox-2.mp4`` and ``fox-3.png``.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from .models import TaskOutput

__all__ = ["numbered_name", "output_suffix", "variant_stem"]

_SUFFIXES = {
    "video": frozenset({".mp4", ".mov", ".webm", ".mkv", ".m4v"}),
    "image": frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"}),
}
_DEFAULT = {"video": ".mp4", "image": ".png"}


def output_suffix(output: TaskOutput) -> str:
    """The file extension for `output`: its link's, when that is a known one of its
    kind, else the kind's default (``.mp4``, ``.png``)."""
    try:
        path = urlsplit(output.url).path
    except ValueError:  # a link no URL parser takes: refused when it is fetched
        path = ""
    suffix = PurePosixPath(unquote(path)).suffix.lower()
    if suffix in _SUFFIXES.get(output.kind, frozenset()):
        return suffix
    return _DEFAULT.get(output.kind, ".bin")


def numbered_name(stem: str, index: int, output: TaskOutput) -> str:
    """The file name of output `index` (from 0) of a task whose files are named `stem`:
    ``STEM.EXT`` for the first, ``STEM-N.EXT`` (N = `index` + 1) for the others."""
    number = "" if index == 0 else f"-{index + 1}"
    return f"{stem}{number}{output_suffix(output)}"


def variant_stem(base: str, n: int) -> str:
    """The `n`-th choice (from 1) of a stem for an item whose name is taken (a file in
    the way, another item's): ``BASE``, then ``BASE~2``, ``BASE~3``... (``-N`` numbers
    only one task's outputs, see `numbered_name`)."""
    return base if n == 1 else f"{base}~{n}"
