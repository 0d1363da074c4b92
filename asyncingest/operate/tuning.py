"""Process-level tuning for batch runs (the CLI applies it; embedders may call it).

Python's cycle collector runs every 700 allocations by default, and the JSON-to-Arrow path
allocates millions of short-lived dicts; a generation-0 collection then rescans every
long-lived object again and again. Freezing what start-up created and raising the
thresholds removed most of that time in the crawl benchmark (benchmarks/RESULTS.md).
Not applied by the library on its own: it changes the whole process, which in an embedding
service is the host's decision.
"""

from __future__ import annotations

import gc


def tune_gc(threshold: int = 20_000) -> None:
    """Move everything allocated so far out of the collector's way and collect less often."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(threshold, max(g1, 20), max(g2, 100))
