"""Every public annotation resolves with `typing.get_type_hints` after a plain import.

Sphinx autodoc, cattrs, pydantic-style validators and IDEs read annotations through
`typing.get_type_hints`: a name that only a ``TYPE_CHECKING`` block imports makes it raise
`NameError`. The check runs in a fresh interpreter, so nothing this test process has
imported (the batch runner, the emulator) can stand in for a missing name, and it
fails too if resolving them needed the batch modules the package imports lazily.
"""

import subprocess
import sys

_WALK = r'''
import inspect, sys, typing
import apimart_async, apimart_async.sync

def targets(owner, name, obj):
    """(label, object) pairs whose annotations a reader of `obj` resolves."""
    if inspect.isclass(obj):
        yield f"{owner}.{name}", obj  # its class-level annotations (attrs fields)
        for klass in obj.__mro__:
            if not klass.__module__.startswith("apimart_async"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") and attr not in ("__init__", "__call__"):
                    continue
                if isinstance(value, property):
                    value = value.fget
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                # attrs' generated __init__ too: what autodoc and IDEs read for a call.
                if inspect.isfunction(value):
                    yield f"{owner}.{name}.{attr}", value
    elif inspect.isfunction(obj):
        yield f"{owner}.{name}", obj

checked, failures = 0, []
for module in (apimart_async, apimart_async.sync):
    for name in module.__all__:
        if name.startswith("__"):
            continue
        for label, obj in targets(module.__name__, name, getattr(module, name)):
            checked += 1
            try:
                typing.get_type_hints(obj)
            except Exception as exc:
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
heavy = sorted(m for m in ("apimart_async._batch.runner", "apimart_async._batch.journal",
                           "apimart_async._batch.fleet", "apimart_async._batch.pg",
                           "apimart_async.testing._emulator", "sqlite3")
               if m in sys.modules)
print(checked)
print(heavy)
print("\n".join(failures))
'''


def test_every_public_annotation_resolves_without_loading_the_batch_modules() -> None:
    done = subprocess.run([sys.executable, "-c", _WALK], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    checked, heavy, *failures = done.stdout.splitlines()
    # Session alone has ~20 public methods: a walk that found little walked nothing.
    assert int(checked) > 100
    assert heavy == "[]", f"resolving annotations loaded {heavy}"
    assert [f for f in failures if f] == []


def test_session_run_batch_hints_name_the_public_batch_types() -> None:
    import typing

    import apimart_async
    import apimart_async.sync

    for session in (apimart_async.Session, apimart_async.sync.Session):
        hints = typing.get_type_hints(session.run_batch)
        assert hints["return"] is apimart_async.BatchReport
        assert typing.get_type_hints(session.run_worker)["return"] is apimart_async.WorkerOutcome
    hints = typing.get_type_hints(apimart_async.TaskFailedError.__init__)
    assert hints["task"] is apimart_async.Task
