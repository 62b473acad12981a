"""Errors out of our task groups as themselves, not wrapped in an `ExceptionGroup`.

anyio's task groups wrap whatever leaves them in a `BaseExceptionGroup`, even one
exception raised by the caller's own code in the ``async with`` block. Where our task
groups meet the caller, a group holding a single exception (nested groups flattened)
is replaced by that exception, so ``except TaskFailedError:`` catches it. Failures that
are truly several (two background tasks failing at once) stay grouped.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from types import TracebackType

if sys.version_info < (3, 11):  # pragma: no cover - anyio installs the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["lone_exception", "ungrouped"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def lone_exception(exc: BaseException) -> BaseException | None:
    """The one exception inside `exc` if it is a group of exactly one, else None."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    leaves = list(itertools.islice(_leaves(exc), 2))
    return leaves[0] if len(leaves) == 1 else None


class ungrouped:
    """Inside this block, a task group's lone exception comes out as itself."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lone = lone_exception(exc) if exc is not None else None
        if lone is None:
            return
        # Raising here would chain the group as the exception's __context__; keep the
        # context it had, so the traceback reads as if no group had been involved.
        context = lone.__context__
        try:
            raise lone
        finally:
            lone.__context__ = context
