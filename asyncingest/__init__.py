"""asyncingest: pull data out of rate-limited HTTP APIs into Parquet.

Everything a user may import is re-exported here; the sub-packages (``config``, ``core``,
``limits``, ``http``, ``sink``, ``state``, ``transform``, ``engine``, ``sync``, ``operate``,
``cli``) are private, whatever their names, and may change.
See docs/architecture.md for the data flow.
"""

from .config.loading import config_from_dict, load_config
from .config.models import (
    ApiConfig,
    AuthConfig,
    ConcurrencyConfig,
    CursorPagination,
    CustomPagination,
    EndpointConfig,
    ForEach,
    FromFile,
    HttpConfig,
    IncrementalConfig,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OAuth2Config,
    OffsetPagination,
    OutputConfig,
    PagePagination,
    PipelineConfig,
    RateWindow,
    RetryConfig,
)
from .core.events import (
    BreakerChanged,
    BudgetExhausted,
    ConcurrencyChanged,
    CursorAhead,
    EndpointFinished,
    EndpointStarted,
    Event,
    EventBus,
    FileCommitted,
    IncrementStarted,
    JobFinished,
    JobsQueued,
    RatePaused,
    RecordsExpected,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RequestStarted,
    RunFinished,
    RunStarted,
    Subscriber,
)
from .core.pagination import Paginator
from .core.request import Page, Request
from .core.result import EndpointSummary, IncrementSummary, RunResult, WindowSummary
from .core.snapshot import EndpointSnapshot, Snapshot, WindowUsage
from .engine.engine import Engine
from .engine.loop_thread import PipelineThread
from .engine.pipeline import Pipeline, PipelineStateError, run, run_sync
from .errors import (
    AsyncIngestError,
    BatchesClosed,
    ConfigError,
    EnvironmentFailure,
    OutputLocked,
    Problem,
    RunCancelled,
    StateCorrupt,
)
from .limits.clock import Clock, LoopClock
from .limits.limiter import ConcurrencyLimit, Limits, SlidingWindowLimiter
from .limits.rate_budget import Budget, BudgetPermit, RateBudget
from .limits.redis_budget import RedisBudget
from .operate.tuning import tune_gc
from .testing import FakeClock

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 -- grouped by topic, as a table of contents; sorting would mix the groups
    "__version__",
    # config
    "PipelineConfig",
    "ApiConfig",
    "AuthConfig",
    "OAuth2Config",
    "HttpConfig",
    "RateWindow",
    "RetryConfig",
    "ConcurrencyConfig",
    "OutputConfig",
    "EndpointConfig",
    "IncrementalConfig",
    "ForEach",
    "FromFile",
    "NoPagination",
    "OffsetPagination",
    "PagePagination",
    "CursorPagination",
    "NextUrlPagination",
    "LinkHeaderPagination",
    "CustomPagination",
    "Paginator",  # what a custom paginator implements, and the two types it handles
    "Request",
    "Page",
    "load_config",
    "config_from_dict",
    # running a pipeline
    "Pipeline",
    "run",
    "run_sync",
    "Engine",
    "PipelineStateError",
    "Budget",
    "RedisBudget",
    "PipelineThread",
    "tune_gc",
    # results and snapshots
    "Snapshot",
    "EndpointSnapshot",
    "WindowUsage",
    "RunResult",
    "EndpointSummary",
    "IncrementSummary",
    "WindowSummary",
    # events
    "Event",
    "EventBus",
    "Subscriber",
    "RunStarted",
    "IncrementStarted",
    "CursorAhead",
    "RunFinished",
    "EndpointStarted",
    "EndpointFinished",
    "JobsQueued",
    "JobFinished",
    "RequestStarted",
    "RequestFinished",
    "RequestRetried",
    "RequestFailed",
    "RecordsExpected",
    "RecordsWritten",
    "RecordsRejected",
    "FileCommitted",
    "RatePaused",
    "BudgetExhausted",
    "BreakerChanged",
    "ConcurrencyChanged",
    # errors
    "AsyncIngestError",
    "ConfigError",
    "Problem",
    "OutputLocked",
    "EnvironmentFailure",
    "StateCorrupt",
    "BatchesClosed",
    "RunCancelled",
    # limits and time
    "RateBudget",
    "BudgetPermit",
    "SlidingWindowLimiter",
    "ConcurrencyLimit",
    "Limits",
    "Clock",
    "LoopClock",
    # testing
    "FakeClock",
]
