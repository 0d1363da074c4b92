"""The async engine: the run (``engine``), each endpoint's walk loop (``endpoint``), the writer task
that commits pages in order (``writer``), the bounded page channel (``channel``) and the guards
that apply breaker, throttle and adaptive limits per request (``guards``). It may import every
layer below it (state, sink, http, transform, limits, core, config); it never imports the
sync mode, :mod:`asyncingest.operate`, :mod:`asyncingest.cli`, rich or prometheus_client: it
emits events and never prints. See docs/architecture.md. Private: everything below the public
API in :mod:`asyncingest` may change.
"""
