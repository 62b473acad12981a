"""The public contract: names importable from the facade."""

import apimart_async
import apimart_async.sync
import apimart_async.testing

EXPECTED = [
    "APIConnectionError",
    "APIMartError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "BatchEvent",
    "BatchItem",
    "BatchReport",
    "BatchSpend",
    "BatchStream",
    "Clock",
    "DecodeError",
    "DownloadError",
    "DownloadEvent",
    "DownloadPolicy",
    "DownloadResult",
    "EventKind",
    "Hooks",
    "InsufficientBalanceError",
    "ItemResult",
    "ItemState",
    "JournalBusyError",
    "JournalUnavailableError",
    "JournalWriteError",
    "ModelName",
    "ModelSpec",
    "NotFoundError",
    "NotSubmittedError",
    "PermissionDeniedError",
    "PollPolicy",
    "RateChangeEvent",
    "RateLimitError",
    "RequestEvent",
    "ResultExpiredError",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "Session",
    "SessionStats",
    "Submission",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskOutput",
    "TaskStatus",
    "TaskTimeoutError",
    "TaskUpdate",
    "Timeout",
    "ValidationError",
    "VideoRequest",
    "Watch",
    "WorkerFencedError",
    "WorkerOutcome",
    "__version__",
    "get_model_spec",
    "known_models",
    "register_model",
    "unregister_model",
]


def test_exported_names_are_pinned_and_sorted() -> None:
    assert apimart_async.__all__ == EXPECTED
    assert sorted(apimart_async.__all__) == apimart_async.__all__
    for name in apimart_async.__all__:
        assert getattr(apimart_async, name) is not None


def test_testing_names_are_sorted_and_importable() -> None:
    names = apimart_async.testing.__all__
    assert sorted(names) == names
    for name in names:
        assert getattr(apimart_async.testing, name) is not None


def test_every_public_object_has_a_docstring() -> None:
    for name in apimart_async.__all__:
        obj = getattr(apimart_async, name)
        if name != "__version__":
            assert obj.__doc__, name


def test_error_tree() -> None:
    e = apimart_async
    for cls in (
        e.ValidationError, e.APIStatusError, e.APIConnectionError, e.DecodeError,
        e.TaskFailedError, e.TaskTimeoutError, e.ResultExpiredError, e.DownloadError,
        e.NotSubmittedError, e.JournalBusyError,
    ):
        assert issubclass(cls, e.APIMartError)
    assert issubclass(e.JournalBusyError, e.ValidationError)
    assert issubclass(e.ValidationError, ValueError)
    assert issubclass(e.APITimeoutError, TimeoutError)
    assert issubclass(e.APITimeoutError, e.APIConnectionError)
    assert issubclass(e.TaskTimeoutError, TimeoutError)
    for cls in (
        e.BadRequestError, e.AuthenticationError, e.InsufficientBalanceError,
        e.PermissionDeniedError, e.NotFoundError, e.RateLimitError, e.ServerError,
    ):
        assert issubclass(cls, e.APIStatusError)


def test_sync_names_are_pinned_and_documented() -> None:
    assert apimart_async.sync.__all__ == ["BatchStream", "Session", "Watch"]
    for name in apimart_async.sync.__all__:
        assert getattr(apimart_async.sync, name).__doc__, name
    # The same operations as the async session.
    for method in ("submit", "submit_many", "get_task", "wait", "download", "watch", "stream",
                   "run_batch", "close", "__enter__", "__exit__"):
        assert callable(getattr(apimart_async.sync.Session, method)), method


def _fresh_import(code: str) -> str:
    """Run `code` in a new interpreter (this one has imported everything already)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


# What a plain Session user never needs: the batch runner, its journals (SQLite,
# PostgreSQL) and the fleet, ~3.4 MB of every process's memory (#14).
_BATCH_ONLY = ["apimart_async._batch.runner", "apimart_async._batch.journal",
               "apimart_async._batch.pg", "apimart_async._batch.fleet",
               "apimart_async._batch.store", "apimart_async._batch.inputs", "sqlite3"]


def test_importing_the_package_does_not_import_the_batch_modules() -> None:
    out = _fresh_import(
        "import sys, apimart_async, apimart_async.sync\n"
        f"print(sorted(m for m in {_BATCH_ONLY!r} if m in sys.modules))\n")
    assert out.strip() == "[]"


def test_batch_names_come_from_the_light_module_and_are_the_runners() -> None:
    # The types a batch takes and gives back live in `_batch.report` (imported with the
    # package, so the session's annotations resolve); the runner, journal and fleet,
    # loaded later, name the very same classes.
    out = _fresh_import(
        "import sys, apimart_async\n"
        "from apimart_async import BatchItem, BatchReport, BatchSpend, ItemResult\n"
        "from apimart_async import ItemState, WorkerOutcome\n"
        f"assert not [m for m in {_BATCH_ONLY!r} if m in sys.modules]\n"
        "from apimart_async._batch import fleet, journal, runner\n"
        "assert BatchItem is runner.BatchItem and BatchReport is runner.BatchReport\n"
        "assert BatchSpend is runner.BatchSpend and ItemResult is runner.ItemResult\n"
        "assert ItemState is journal.ItemState and WorkerOutcome is fleet.WorkerOutcome\n"
        "assert set(apimart_async.__all__) <= set(dir(apimart_async))\n"
        "try:\n"
        "    apimart_async.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n")
    assert out.strip() == "module 'apimart_async' has no attribute 'NoSuchName'"


def test_importing_the_package_does_not_import_difflib() -> None:
    # ~150 KB of memory that only an unknown model name's "did you mean" needs: it paid
    # for the batch types the package now imports at once.
    out = _fresh_import(
        "import sys, apimart_async, apimart_async.sync\n"
        "print('difflib' in sys.modules)\n")
    assert out.strip() == "False"


def test_a_harness_running_the_emulator_in_a_child_process_does_not_load_it() -> None:
    # `emulator_process` runs the emulator in another process: the harness's own memory
    # (what bench_watch_scale.py measures) carries neither the emulator nor its server.
    out = _fresh_import(
        "import sys\n"
        "from apimart_async.testing import emulator_process, set_testing\n"
        "print(sorted(m for m in ('aiohttp.web', 'apimart_async.testing._emulator',\n"
        "                         'apimart_async.testing._server') if m in sys.modules))\n")
    assert out.strip() == "[]"
    out = _fresh_import(
        "import apimart_async.testing as t\n"
        "from apimart_async.testing import *  # noqa: F403\n"
        "from apimart_async.testing._server import EmulatorServer as S\n"
        "assert t.EmulatorServer is S and EmulatorServer is S  # noqa: F405\n"
        "assert set(t.__all__) <= set(dir(t))\n"
        "print('ok')\n")
    assert out.strip() == "ok"
