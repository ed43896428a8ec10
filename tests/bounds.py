"""A measured block for hostile-input tests: bounded time and memory, generous bounds.

``with within_bounds(): ...`` traces allocations (tracemalloc) and the elapsed time of the
block, and asserts afterwards that the peak stayed under 200 MiB and the time under 10 s.
These bounds catch a hang or an out-of-memory, not a slowdown (that is ``make bench``'s).
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Iterator

PEAK_LIMIT = 200 << 20
SECONDS_LIMIT = 10.0


@contextlib.contextmanager
def within_bounds() -> Iterator[None]:
    """Run the block measured; raise ``AssertionError`` if it went past the bounds."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert elapsed < SECONDS_LIMIT, f"{elapsed:.1f} s"
