"""apimart_async: the asyncio-native SDK for the APIMart video generation API.

    import asyncio
    from apimart_async import Session, VideoRequest

    async def main():
        async with Session() as session:            # key from APIMART_API_KEY
            sub = await session.submit(VideoRequest("a red fox in the snow", duration=5))
            task = await session.wait(sub)
            print(task.video_urls)

    asyncio.run(main())

Everything public is re-exported here; the modules behind it are private.
"""

from ._batch.report import (
    BatchItem,
    BatchReport,
    BatchSpend,
    ItemResult,
    ItemState,
    WorkerOutcome,
)
from ._core.balance import Balance
from ._core.config import DownloadPolicy, Timeout
from ._core.errors import (
    APIConnectionError,
    APIMartError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    DownloadError,
    InsufficientBalanceError,
    JournalBusyError,
    JournalUnavailableError,
    JournalWriteError,
    NotFoundError,
    NotSubmittedError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
    WorkerFencedError,
)
from ._core.events import BatchEvent, EventKind, TaskUpdate
from ._core.hooks import DownloadEvent, Hooks, RateChangeEvent, RequestEvent, RetryEvent
from ._core.models import Submission, Task, TaskError, TaskOutput, TaskStatus, VideoRequest
from ._core.polling import PollPolicy
from ._core.registry import (
    ModelName,
    ModelSpec,
    get_model_spec,
    known_models,
    register_model,
    unregister_model,
)
from ._core.retry import RetryPolicy
from ._engine.streams import BatchStream, Watch
from ._io.clock import Clock
from ._io.download import DownloadResult
from ._io.stats import SessionStats
from ._session import Session
from ._version import __version__

# The batch runner, its SQLite and PostgreSQL journals and the fleet (~3.4 MB of
# memory) are imported by `Session.run_batch`/`run_worker` when called, not here (#14);
# the types they take and give back come from the light `_batch.report`.

__all__ = [
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
