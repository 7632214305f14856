"""The gateway keeps its heap for the next request (shared/heap.py): a burst of large blocks freed and
taken again is not faulted in again each time, as glibc's dynamic thresholds had it (docs/performance.md item 62)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.heap import TRIM_THRESHOLD, keep_heap

ROOT = Path(__file__).resolve().parents[2]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
# a 2 MB block freed once sets glibc's dynamic thresholds (blocks of up to 2 MB from the heap, its free top given back
# above 4 MB); then each round takes three 1.5 MB blocks, touches them and frees them: 4.5 MB of free top each time.
# Counted in 4 KiB pages whatever the host's transparent huge pages ('always' is RHEL's default; a huge page is one
# fault for 512 pages): the process turns them off for itself (prctl PR_SET_THP_DISABLE) before it counts.
ROUNDS = textwrap.dedent("""
    import ctypes, resource, sys
    from shared.heap import keep_heap
    assert ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0, "PR_SET_THP_DISABLE"
    if sys.argv[1] == "kept":
        assert keep_heap({})
    first = b"x" * (2 << 20)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        blocks = [b"y" * (1536 << 10) for _ in range(3)]
        del blocks
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(variant: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, variant], capture_output=True, text=True, timeout=60,
                          check=True, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_blocks_are_taken_again_without_faulting_them_in() -> None:
    default, kept = _faults("default"), _faults("kept")
    # the default gives the 4.5 MB back every round: 40 rounds of ~1,150 pages; kept: the first round's only
    assert default > 20 * 1000
    assert kept < 5 * 1000


# six threads at once (the gateway's executor's, an upload's parts each) take, touch and free 5 MiB blocks
THREADS = textwrap.dedent("""
    import ctypes, json, sys, threading
    from shared.heap import keep_heap
    assert ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0, "PR_SET_THP_DISABLE"
    assert keep_heap(json.loads(sys.argv[1]))
    def anonymous_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) >> 10
    together = threading.Barrier(6)
    def transfer():
        together.wait()
        for _ in range(10):
            part = b"p" * (5 << 20)
            copy = bytes(bytearray(part))
            del part, copy
    before = anonymous_mib()
    threads = [threading.Thread(target=transfer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(anonymous_mib() - before)
""")


def _threads_kept_mib(environ: dict[str, str]) -> int:
    done = subprocess.run([sys.executable, "-c", THREADS, json.dumps(environ)], capture_output=True, text=True,
                          timeout=60, check=True, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_what_threads_freed_is_kept_up_to_the_trim_threshold_for_the_whole_process() -> None:
    # an arena a thread, each keeping up to 32 MiB, kept +90 MiB; one arena for all: under one trim threshold
    # (0-30 MiB in 80 runs, by how the threads' blocks interleave), a 5 MiB block's margin or so above it
    bound = (TRIM_THRESHOLD >> 20) + 16
    assert _threads_kept_mib({}) <= bound
    # an operator's arena limit wins (here as if MALLOC_ARENA_MAX were glibc's default, 8 a core): an arena a thread
    assert _threads_kept_mib({"MALLOC_ARENA_MAX": "16"}) > bound


def test_an_operators_own_settings_win() -> None:
    assert not keep_heap({"MALLOC_TRIM_THRESHOLD_": "1048576"})
    assert not keep_heap({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not keep_heap({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"})
    assert not keep_heap({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=131072"})


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},  # a container's usual setting, as MALLOC_ARENA_MAX=2 is
    {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1", "MALLOC_ARENA_MAX": "2"},
    {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F:glibc.mem.tagging=0"},
], ids=["arena_max", "tcache_hugetlb_and_arena_variable", "not_malloc"])
def test_an_operators_other_malloc_settings_leave_the_thresholds_to_keep_heap(environ: dict[str, str]) -> None:
    # in a process of its own: keep_heap sets the thresholds of the process it runs in
    done = subprocess.run([sys.executable, "-c", "import json, sys; from shared.heap import keep_heap; "
                           "print(keep_heap(json.loads(sys.argv[1])))", json.dumps(environ)],
                          capture_output=True, text=True, timeout=60, check=True, env={"PYTHONPATH": str(ROOT)},
                          cwd=ROOT)
    assert done.stdout.split()[-1] == "True"


@pytest.mark.parametrize("libc", ["none", "without_mallopt"])
def test_a_libc_without_mallopt_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch, libc: str) -> None:
    # macOS (no libc.so.6 to load) and musl (no mallopt): False, nothing raised, the gateway starts as before
    def load(name: str) -> object:
        if libc == "none":
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    monkeypatch.setattr("shared.heap.ctypes.CDLL", load)
    assert keep_heap({}) is False
