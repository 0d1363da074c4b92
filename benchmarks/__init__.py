"""Benchmarks: asyncingest against the sync way and against a bare aiohttp loop.

Run them all with ``python benchmarks/run_all.py`` (``--quick`` for a small size); the
figures print side by side and land in ``benchmarks/RESULTS.md``. Benchmarks are not tests:
``tests/test_benchmarks.py`` only checks that every case still runs end to end.

Modules: ``_harness`` (the mock API in its own process, clients in their own processes, the
machine), ``_clients`` (what runs inside a client process), ``bare_aiohttp`` (the ceiling: a
hand-written aiohttp loop), ``_stages`` (case 3's per-stage costs), ``cases`` (the five cases)
and ``run_all`` (the command).
"""
