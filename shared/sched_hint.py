"""A short scheduler slice for the processes an inference waits on (issue 20: the batch-1 tail).

A batch-1 request wakes four processes in turn (load generator or client, gateway, nats-server, engine replica,
and back). On a busy machine each wake-up can find both cores taken; Linux's EEVDF scheduler (6.6 and later) then
lets the task already running finish its slice (`RUN_TO_PARITY`), and without a high-resolution tick that slice
ends at the next timer tick: 4 ms at HZ=250. `perf sched timehist` of the slowest requests showed exactly that: a
woken gateway, nats-server or replica runnable for 3-4 ms while another process ran out its slice
(docs/performance.md, the batch-1 tail). Since Linux 6.12 a task may ask for a shorter slice (`sched_setattr`'s
`sched_runtime` for SCHED_OTHER, 0.1-100 ms); a waking task with a shorter slice than the running one ends that
one's protection (`PREEMPT_SHORT`) and runs at once when it is owed CPU time. Its share of CPU over time stays
what it was (the weight, nice, is unchanged); it runs sooner, in shorter turns.

`request_path_slice` asks for it for the calling thread; threads and processes started afterwards inherit it,
across exec too, so it is called first thing in a process (or in a child before exec). Older kernels accept the
value and ignore it; a kernel or seccomp filter that refuses the call leaves the default, silently: this is a
latency hint, never a requirement.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# (sched_setattr, sched_getattr) syscall numbers
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000  # what the kernel accepts (it clamps to this range)


def _load() -> tuple[ctypes.CDLL | None, tuple[int, int] | None]:
    """libc and the syscall numbers, found once at import: a child between fork and exec (the callers' preexec_fn)
    then only makes the two system calls, no dlopen."""
    numbers = _SYSCALLS.get(platform.machine()) if sys.platform.startswith("linux") else None
    try:
        return (ctypes.CDLL(None, use_errno=True) if numbers else None), numbers
    except OSError:
        return None, None


_LIBC, _NUMBERS = _load()


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64), ("util_min", ctypes.c_uint32),
                ("util_max", ctypes.c_uint32)]


def request_path_slice(microseconds: int, tid: int = 0) -> bool:
    """Ask the scheduler for a slice of `microseconds` for thread `tid` (0: the calling thread), its policy, nice
    and flags kept; 0 asks for nothing. True when the kernel took it (whether it acts on it depends on its
    version); False where there is no such call or it was refused."""
    libc, numbers = _LIBC, _NUMBERS
    if microseconds <= 0 or libc is None or numbers is None:
        return False
    attr = _SchedAttr()
    if libc.syscall(numbers[1], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return False
    if attr.policy not in (0, 3):  # SCHED_OTHER, SCHED_BATCH: a real-time or idle policy is left as it is
        return False
    attr.size = ctypes.sizeof(attr)
    attr.runtime = min(max(microseconds, MIN_SLICE_US), MAX_SLICE_US) * 1000
    return libc.syscall(numbers[0], tid, ctypes.byref(attr), 0) == 0


def slice_of(tid: int = 0) -> int | None:
    """The thread's slice in microseconds as the kernel reports it (/proc's `se.slice`), None where unknown."""
    path = f"/proc/self/task/{tid}/sched" if tid else "/proc/thread-self/sched"
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("se.slice"):
                    return int(line.split(":")[1]) // 1000
    except OSError:
        return None
    return None


def parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send this process `sig` when its parent dies (prctl PR_SET_PDEATHSIG, Linux), with the
    libc found at import: safe in a child between fork and exec (no dlopen, whose loader lock another thread of
    the parent may have held at the fork). True when the kernel took it."""
    if _LIBC is None:
        return False
    return _LIBC.prctl(1, sig) == 0  # PR_SET_PDEATHSIG
