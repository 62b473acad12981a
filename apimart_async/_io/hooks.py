"""Calling the user's hooks: an error in one is logged, never raised into the session."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

__all__ = ["fire"]

log = logging.getLogger("apimart_async")
E = TypeVar("E")


def fire(hook: Callable[[E], object] | None, event: E) -> None:
    """Call `hook` with `event`, if there is a hook; whatever it raises is logged."""
    if hook is None:
        return
    try:
        result = hook(event)
    except Exception as exc:
        # The observer's bug is not the session's: the work goes on, the trace is kept.
        # A hook told of a failure runs while that error is handled: its traceback is
        # the hook's own, not "During handling of the above exception" the session's.
        exc.__suppress_context__ = True
        log.error("hook %s raised on %s; ignored", _name(hook), type(event).__name__,
                  exc_info=exc)
        return
    if inspect.isawaitable(result):
        # A sync callable that returned a coroutine: it would never run, and would warn
        # "never awaited" later; say so now, once per call, and close it.
        close = getattr(result, "close", None)
        if close is not None:
            close()
        log.error("hook %s returned an awaitable; hooks are not awaited (use a plain "
                  "function)", _name(hook))


def _name(hook: Callable[..., object]) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__name__
