"""A process's glibc heap kept for its next large blocks instead of given back after each use.

glibc serves a block from the heap once a block of its size was freed (its dynamic mmap threshold), but gives the
heap's free top back to the system (`brk`) whenever it exceeds twice the largest block freed so far: the gateway,
which takes and frees a few MB for every 1,000-row records request (the 570 KB body, simdjson's document, the
echo's print, the 830 KB answer; four connections four times that), had them faulted in again every request, ~150-200
minor page faults (~1 ms of first touch a MiB on this VM, docs/performance.md items 34 and 62). `keep_heap` serves
blocks up to `mmap_threshold` from the heap and keeps up to `trim_threshold` of its free top: the process may hold
that much more RSS after a burst (none before its first large block, so the idle stack's figure does not move).

The thresholds hold for every arena, and glibc gives each thread that allocates an arena of its own (up to 8 a
core), each keeping its own free top: threads that moved 5 MiB blocks (a model upload's parts through the
gateway's executor; a download's reads are 1 MiB) kept up to 32 MiB each afterwards (six such threads: +90 MiB
anonymous memory, glibc's defaults +0; docs/performance.md item 66). So `keep_heap` also makes the process's threads
share one arena (`arenas`), which makes the bound the process's; call it before the process starts a thread. The
gateway's request path runs on the event loop's thread; the executor's threads take the arena's lock a block at a
time.

An operator's own thresholds (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or their `GLIBC_TUNABLES`) win:
`keep_heap` then changes nothing; their arena limit (`MALLOC_ARENA_MAX`, `glibc.malloc.arena_max`) wins over
`arenas`. Not glibc (musl, macOS: no `mallopt`): nothing to do. The engine's replicas do not call it: their page
faults are not the heap's trim (item 63), and their memory right after a load is a target of its own (items 30-31,
37)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 32 << 20
ARENAS = 1


# an operator's thresholds: glibc's environment variables and their tunables
THRESHOLD_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
THRESHOLD_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
ARENA_VARIABLE, ARENA_TUNABLE = "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"


def tunables(environ: Mapping[str, str]) -> set[str]:
    """The names GLIBC_TUNABLES sets: `name=value` pairs separated by colons."""
    return {item.split("=", 1)[0].strip() for item in environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item}


def keep_heap(environ: Mapping[str, str] = os.environ, mmap_threshold: int = MMAP_THRESHOLD,
              trim_threshold: int = TRIM_THRESHOLD, arenas: int = ARENAS) -> bool:
    """Set the thresholds and the arena limit (see the module docstring); True when the thresholds were set. An
    operator's own threshold (either) leaves everything to glibc and to them; their arena limit, the limit only;
    their other malloc settings (tcache_count, hugetlb, ...) nothing."""
    names = tunables(environ)
    if any(name in environ for name in THRESHOLD_VARIABLES) or names & set(THRESHOLD_TUNABLES):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if ARENA_VARIABLE not in environ and ARENA_TUNABLE not in names:
        mallopt(M_ARENA_MAX, arenas)  # first: an arena made before it would keep its own free top
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
