"""The request path's scheduler slice (shared/sched_hint.py): asked for, inherited, nice kept, and where the
embedded stack and the deployer start their children with it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.deployer import backend
from shared import sched_hint
from shared.embedded.stack import Child

READ_SLICE = "import sys; from shared.sched_hint import slice_of; print(slice_of())"

pytestmark = pytest.mark.skipif(sched_hint.slice_of() is None, reason="the kernel reports no EEVDF slice (< 6.6)")


def in_thread(work):
    """work() in a fresh thread (the test's own thread keeps its slice); its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def test_a_thread_gets_the_slice_and_keeps_its_nice():
    def work():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 3)
        took = sched_hint.request_path_slice(300)
        return took, sched_hint.slice_of(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    took, slice_us, nice = in_thread(work)
    if not took:
        pytest.skip("sched_setattr refused here")
    assert slice_us == 300
    assert nice == 3


def test_threads_started_after_inherit_it_and_out_of_range_is_clamped():
    def work():
        if not sched_hint.request_path_slice(10):  # under the kernel's 100 us minimum
            return None
        return sched_hint.slice_of(), in_thread(sched_hint.slice_of)

    found = in_thread(work)
    if found is None:
        pytest.skip("sched_setattr refused here")
    assert found == (sched_hint.MIN_SLICE_US, sched_hint.MIN_SLICE_US)


def test_zero_asks_for_nothing():
    before = in_thread(sched_hint.slice_of)

    def work():
        return sched_hint.request_path_slice(0), sched_hint.slice_of()

    assert in_thread(work) == (False, before)


def test_the_stack_starts_a_child_with_its_slice_and_others_without(tmp_path: Path):
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    default = in_thread(sched_hint.slice_of)
    for slice_us, expected in ((250, 250), (0, default)):
        log = tmp_path / f"child-{slice_us}.log"
        child = Child("nats", [sys.executable, "-c", READ_SLICE], env, log, slice_us=slice_us)
        child.start()
        assert child.proc.wait(30) == 0
        assert log.read_text().split() == [str(expected)]


def test_the_deployer_starts_replicas_with_its_slice():
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", READ_SLICE], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(repo)),
                         preexec_fn=lambda: backend._die_with_parent(400))
    assert out.stdout.split() == ["400"]


def test_parent_death_signal_is_set_for_the_calling_process():
    import subprocess
    import sys

    code = ("import ctypes, signal; from shared.sched_hint import parent_death_signal; "
            "assert parent_death_signal(signal.SIGUSR1); got = ctypes.c_int(); "
            "ctypes.CDLL(None).prctl(2, ctypes.byref(got)); print(got.value)")  # PR_GET_PDEATHSIG
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == 10  # SIGUSR1
