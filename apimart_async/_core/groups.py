"""Errors out of our task groups as themselves, not wrapped in an `ExceptionGroup`.

anyio's task groups wrap whatever leaves them in a `BaseExceptionGroup`, even one
exception raised by the caller's own code in the ``async with`` block. Where our task
groups meet the caller, such a wrapper holding a single exception is replaced by that
exception (through nested wrappers), so ``except TaskFailedError:`` catches it. Only
the task groups' own wrappers are taken off: an exception group the caller raised
comes out as that very object, whatever its size. Failures that are truly several
(two background tasks failing at once) stay grouped.
"""

from __future__ import annotations

import sys
from types import TracebackType

if sys.version_info < (3, 11):  # pragma: no cover - anyio installs the backport on 3.10
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

__all__ = ["lone_exception", "ungrouped"]


# The message anyio (and asyncio.TaskGroup) give the group a task group raises. A group
# the caller made has its own message; it is never taken apart.
_WRAPPER = "unhandled errors in a TaskGroup"


def _is_wrapper(exc: BaseException) -> bool:
    return (
        type(exc) in (BaseExceptionGroup, ExceptionGroup)
        and exc.message == _WRAPPER  # type: ignore[attr-defined]
    )


def lone_exception(exc: BaseException) -> BaseException | None:
    """The one exception inside `exc` if it is a task group's wrapper (or wrappers)
    around exactly one, else None."""
    if not _is_wrapper(exc):
        return None
    while _is_wrapper(exc) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return None if _is_wrapper(exc) else exc


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
