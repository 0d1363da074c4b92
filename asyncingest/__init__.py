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
    EndpointConfig,
    ForEach,
    FromFile,
    HttpConfig,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
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
    EndpointFinished,
    EndpointStarted,
    Event,
    EventBus,
    FileCommitted,
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
from .core.result import EndpointSummary, RunResult
from .engine.engine import Engine, run
from .errors import (
    AsyncIngestError,
    ConfigError,
    EnvironmentFailure,
    OutputLocked,
    Problem,
    StateCorrupt,
)
from .limits.clock import Clock, LoopClock
from .limits.limiter import ConcurrencyLimit, Limits, SlidingWindowLimiter
from .operate.tuning import tune_gc

__version__ = "0.1.0"

__all__ = [
    "ApiConfig",
    # errors
    "AsyncIngestError",
    "AuthConfig",
    "BreakerChanged",
    "BudgetExhausted",
    "Clock",
    "ConcurrencyChanged",
    "ConcurrencyConfig",
    "ConcurrencyLimit",
    "ConfigError",
    "CursorPagination",
    "EndpointConfig",
    "EndpointFinished",
    "EndpointStarted",
    "EndpointSummary",
    # running a pipeline
    "Engine",
    "EnvironmentFailure",
    # events
    "Event",
    "EventBus",
    "FileCommitted",
    "ForEach",
    "FromFile",
    "HttpConfig",
    "JobFinished",
    "JobsQueued",
    "Limits",
    "LinkHeaderPagination",
    "LoopClock",
    "NextUrlPagination",
    "NoPagination",
    "OffsetPagination",
    "OutputConfig",
    "OutputLocked",
    "PagePagination",
    # config models
    "PipelineConfig",
    "Problem",
    "RatePaused",
    "RateWindow",
    "RecordsExpected",
    "RecordsRejected",
    "RecordsWritten",
    "RequestFailed",
    "RequestFinished",
    "RequestRetried",
    "RequestStarted",
    "RetryConfig",
    "RunFinished",
    "RunResult",
    "RunStarted",
    # limits and time
    "SlidingWindowLimiter",
    "StateCorrupt",
    "Subscriber",
    "__version__",
    "config_from_dict",
    "load_config",
    "run",
    "tune_gc",
]
