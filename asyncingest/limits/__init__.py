"""The limits a run obeys, all on one injected clock (``clock``): the sliding-window limiter
(``limiter``), budget watches (``budget``), header-driven throttling (``throttle``), the circuit
breaker (``breaker``), adaptive concurrency (``adaptive``) and deadlines (``deadlines``). Waiters
wake on timers, never polls. It may import :mod:`asyncingest.core` and
:mod:`asyncingest.config`; no HTTP client. Private: everything below the public API in
:mod:`asyncingest` may change.
"""
