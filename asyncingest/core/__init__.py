"""The pure core of a crawl: request templates and pages (``request``), records and the jobs that
walk them (``records``), paginators (``pagination``), the retry policy (``retry``), rate-limit
headers (``ratelimit_headers``), the engine's frozen events (``events``) and results
(``result``), JSON and value helpers (``json``, ``values``, ``nested``) and the crash points of the
crash-safety tests (``crashpoints``, used by both the sink and the state files). No I/O and no
waiting; it may import :mod:`asyncingest.config` and :mod:`asyncingest.errors`, never aiohttp.
Private: everything below the public API in :mod:`asyncingest` may change.
"""
