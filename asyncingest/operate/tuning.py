"""Process-level tuning for batch runs (the CLI applies it; embedders may call it).

Python's cycle collector runs every 700 allocations by default, and the JSON-to-Arrow path
allocates millions of short-lived dicts; a generation-0 collection then rescans every
long-lived object again and again. Freezing what start-up created and raising the
thresholds removed most of that time in the crawl benchmark (benchmarks/RESULTS.md).
Not applied by the library on its own: it changes the whole process, which in an embedding
service is the host's decision.

A generation-1 collection scans every object that survived the generation-0 collections since
the last one (records waiting in the writers among them). Every 20th generation-0 collection
(Python's 10, raised to 20 before) it took 13-25 ms of CPU with two crawls at full speed, one
pause holding the GIL, so every thread of a service, not only the loop. Every 5th it scans a
quarter as many survivors: 4-9 ms, for the same total time in the collector (30 s of two
crawls, benchmarks/RESULTS.md, session 5).
"""

from __future__ import annotations

import gc

#: Generation-0 collections between two generation-1 collections (module docstring).
GEN1_EVERY = 5


def tune_gc(threshold: int = 20_000) -> None:
    """Move everything allocated so far out of the collector's way and collect less often
    (generation 0 every ``threshold`` allocations), with short generation-1 pauses."""
    gc.collect()
    gc.freeze()
    _, _, g2 = gc.get_threshold()
    # A full collection after 400 generation-1 ones: as rare as before (20 x 100 generation-0).
    gc.set_threshold(threshold, GEN1_EVERY, max(g2, 400))
