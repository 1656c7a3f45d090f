"""The resident set of this process and its peak over a region of code: one home for the benchmarks'
CPU memory figures (bench_memory.py, bench_autocast_cache.py, memory_budget.py).

    with PeakSampler() as sampled:            # a thread samples the resident set every 2 ms
        step()
    sampled.peak - sampled.before

    with PeakSampler(exact=True) as exact:    # also the kernel's own high-water mark, reset on entry
        step()
    exact.peak                                # max(sampled, the kernel's VmHWM): no transient is missed

exact=True resets the process's peak resident set (writing 5 to /proc/self/clear_refs, Linux >= 4.0), so
regions measured that way must not be nested in one another; where the file is not writable it falls back
to the sampled peak and says so in `exact`.
"""
from __future__ import annotations

import os
import re
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Bytes resident now (anonymous and file-backed pages: /proc/self/statm's second field)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def high_water() -> int:
    """The kernel's peak resident set of this process since it started or since reset_high_water()."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_high_water() -> bool:
    """Reset the kernel's peak resident set to the current one; False where /proc/self/clear_refs is not
    writable (the peak then stays the process's lifetime peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakSampler:
    def __init__(self, exact: bool = False):
        self.peak, self.running, self.exact = rss(), True, exact
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.exact:
            self.exact = reset_high_water()
        self.before = rss()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss(), high_water() if self.exact else 0)
