"""The supervisor's stop, on real processes (no stack): a service that ignores SIGTERM is killed after its grace,
and what a service started and left behind (the deployer's engine replicas, say) goes with it. A signal in the
middle of a real stack's start: tests/integration/test_stack_stop.py."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil

from shared.embedded.stack import Child, EmbeddedStack
from shared.settings import Settings, StackSettings

# a service stand-in: starts a grandchild that ignores SIGTERM, writes its pid, then waits; with "stubborn" it
# ignores SIGTERM itself too
SERVICE = """
import signal, subprocess, sys, time
stubborn = sys.argv[2] == "stubborn"
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
if stubborn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""


def start(tmp_path: Path, name: str, mode: str, grace: float) -> tuple[Child, Path]:
    pid_file = tmp_path / f"{name}.pid"
    child = Child(name, [sys.executable, "-c", SERVICE, str(pid_file), mode], dict(os.environ),
                  tmp_path / f"{name}.log", stop_grace=grace)
    child.start()
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return child, pid_file


def _recorded_waits(child: Child) -> list[tuple[float, bool]]:
    """Each wait the stop makes for `child`: its timeout and whether the child had exited by then."""
    waits: list[tuple[float, bool]] = []
    wait = child.wait

    def recording(timeout: float) -> bool:
        answered = wait(timeout)
        waits.append((timeout, answered))
        return answered

    child.wait = recording  # type: ignore[method-assign]
    return waits


def test_stop_kills_a_stubborn_service_after_its_grace_and_what_services_left_behind(tmp_path):
    stack = EmbeddedStack(Settings(stack=StackSettings(data_dir=tmp_path / "data")))
    polite, polite_pid = start(tmp_path, "polite", "polite", 0.5)
    stubborn, stubborn_pid = start(tmp_path, "stubborn", "stubborn", 0.5)
    stack.services = [polite, stubborn]
    left = [psutil.Process(int(path.read_text())) for path in (polite_pid, stubborn_pid)]
    assert all(p.is_running() for p in left)
    waits = {child.name: _recorded_waits(child) for child in (polite, stubborn)}
    began = time.monotonic()
    stack.stop()
    took = time.monotonic() - began
    assert polite.proc.returncode == -signal.SIGTERM
    assert stubborn.proc.returncode == -signal.SIGKILL
    # the grace, then at once: each service waited for at most its grace (0.5 s) after the SIGTERM, the stubborn one
    # then killed and its exit waited for, and nothing else waited (what they left behind is killed, not waited for).
    # The waits the stop made, not its wall time (an upper bound of 3 s failed on a loaded machine); the lower bound
    # is the grace, which load cannot shorten
    assert [answered for _, answered in waits["polite"]] == [True], waits
    assert [answered for _, answered in waits["stubborn"]] == [False, True], waits
    assert all(timeout <= 0.5 for timeout, _ in waits["polite"] + waits["stubborn"][:1]), waits
    assert took > 0.4, took
    _, alive = psutil.wait_procs(left, timeout=2)
    for process in alive:  # a failure leaves nothing running either
        process.kill()
    assert alive == [], "a service's child that ignores SIGTERM outlived the stack"
