"""tests/conftest.py's early stack (RAILYARD_TEST_STACK_EARLY, set by `make test`): which process starts one when its
session starts, and that a pytest started by a test does not start one again."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest

EARLY = conftest.EARLY


class FakeStack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.stopped = 0

    def stop(self) -> int:
        self.stopped += 1
        return 0


@pytest.fixture
def started(monkeypatch, tmp_path) -> list[FakeStack]:
    """Stands in for stack_directory and start_stack; the stacks "started" (none is, nothing binds a port)."""
    made: list[FakeStack] = []

    @contextlib.contextmanager
    def directory():
        folder = tmp_path / f"stack{len(made)}"
        folder.mkdir()
        yield folder / "data"

    def start(data_dir: Path) -> FakeStack:
        made.append(FakeStack(data_dir))
        return made[-1]

    monkeypatch.setattr(conftest, "stack_directory", directory)
    monkeypatch.setattr(conftest, "start_stack", start)
    own_globals(monkeypatch)
    return made


def own_globals(monkeypatch) -> None:
    """This test's own copies of conftest's session state: the running session's (its early stack, whether it stops
    its stack later) stay as they are."""
    for name, value in (("_early", None), ("_stop_later", False)):
        monkeypatch.setattr(conftest, name, value)


def config(numprocesses: int | None, worker: bool = False, collectonly: bool = False) -> SimpleNamespace:
    made = SimpleNamespace(option=SimpleNamespace(numprocesses=numprocesses, collectonly=collectonly))
    if worker:
        made.workerinput = {"workerid": "gw0"}
    return made


@pytest.mark.parametrize("which", [config(None), config(0), config(2, worker=True)],
                         ids=["no xdist", "-n 0", "an xdist worker"])
def test_a_process_that_runs_tests_starts_it_and_takes_the_variable_out(monkeypatch, started, which):
    monkeypatch.setenv(EARLY, "1")
    conftest._start_stack_early(which)
    assert len(started) == 1 and conftest._early is not None and conftest._early[1] is started[0]
    assert EARLY not in os.environ  # a pytest one of its tests starts (test_ui_browser_required) starts none
    conftest.pytest_sessionfinish(None)  # no test asked for it: stopped at the session's end
    assert started[0].stopped == 1 and conftest._early is None


@pytest.mark.parametrize("which, value", [(config(2), "1"), (config(0), None), (config(0), "0"),
                                          (config(2, worker=True, collectonly=True), "1")],
                         ids=["xdist's controller", "without the variable", "variable 0", "--collect-only"])
def test_no_early_stack(monkeypatch, started, which, value):
    if value is None:
        monkeypatch.delenv(EARLY, raising=False)
    else:
        monkeypatch.setenv(EARLY, value)
    conftest._start_stack_early(which)
    assert started == [] and conftest._early is None
    if which.option.numprocesses and not hasattr(which, "workerinput"):
        assert os.environ.get(EARLY) == "1"  # the controller leaves it to the workers it starts


def test_the_stack_fixture_takes_the_early_stack_over(monkeypatch, started):
    monkeypatch.setenv(EARLY, "1")
    conftest._start_stack_early(config(0))
    healthy = []
    monkeypatch.setattr(FakeStack, "wait_healthy", lambda self: healthy.append(self), raising=False)
    fixture = conftest.stack.__wrapped__()
    assert next(fixture) is started[0] and healthy == started  # the one started early, waited for
    assert conftest._early is None  # the session's end leaves it to the fixture
    conftest.pytest_sessionfinish(None)
    assert started[0].stopped == 0
    with pytest.raises(StopIteration):
        next(fixture)
    assert started[0].stopped == 1 and len(started) == 1


@pytest.fixture
def builds(monkeypatch, tmp_path) -> list[list[str]]:
    """Stands in for the background build's Popen (nothing is built); the commands it was given."""
    made: list[list[str]] = []

    class FakeBuild:
        pid = 0

        def __init__(self, command, **_):
            made.append(command)

        def poll(self):
            return 0

    monkeypatch.setattr(conftest.subprocess, "Popen", FakeBuild)
    monkeypatch.setattr(conftest.client_venv, "REPO", tmp_path)
    monkeypatch.setattr(conftest, "_client_venv_build", None)
    monkeypatch.setattr(conftest, "_client_venv_pending", False)
    return made


def report() -> SimpleNamespace:
    return SimpleNamespace(duration=0.1)


def test_the_client_venv_build_starts_with_the_first_test_report_not_the_session(monkeypatch, builds):
    monkeypatch.setenv(conftest.client_venv.EARLY, "1")
    conftest._start_client_venv_early(config(2))  # xdist's controller, at its session's start
    assert builds == [] and conftest.client_venv.EARLY not in os.environ
    conftest.pytest_runtest_logreport(report())  # a worker's first report, as the controller gets it
    assert builds == [[conftest.sys.executable, "-m", "tests.client_venv"]]
    conftest.pytest_runtest_logreport(report())
    assert len(builds) == 1  # once
    conftest.pytest_unconfigure(None)
    assert conftest._client_venv_build is None


@pytest.mark.parametrize("which, value", [(config(2, worker=True), "1"), (config(0), None),
                                          (config(0, collectonly=True), "1")],
                         ids=["an xdist worker", "without the variable", "--collect-only"])
def test_no_client_venv_build(monkeypatch, builds, which, value):
    if value is None:
        monkeypatch.delenv(conftest.client_venv.EARLY, raising=False)
    else:
        monkeypatch.setenv(conftest.client_venv.EARLY, value)
    conftest._start_client_venv_early(which)
    conftest.pytest_runtest_logreport(report())
    assert builds == []


def test_a_session_with_no_test_report_builds_nothing(monkeypatch, builds):
    monkeypatch.setenv(conftest.client_venv.EARLY, "1")
    conftest._start_client_venv_early(config(0))
    conftest.pytest_unconfigure(None)
    conftest.pytest_runtest_logreport(report())  # a report after the end (none comes): still nothing
    assert builds == []


@pytest.fixture
def later(monkeypatch, tmp_path) -> list[tuple[object, Path]]:
    """Stands in for start_stack and stop_later: the stacks started, and each (process, folder) left to stop later."""
    left: list[tuple[object, Path]] = []

    def start(data_dir: Path) -> FakeStack:
        assert data_dir.parent.is_dir() and data_dir.parent.name.startswith("railyard-test-stack-")
        stack = FakeStack(data_dir)
        stack.process = object()
        stack.wait_healthy = lambda: None
        return stack

    monkeypatch.setattr(conftest, "start_stack", start)
    monkeypatch.setattr(conftest.stack_stop_later, "stop_later", lambda process, folder: left.append((process, folder)))
    own_globals(monkeypatch)
    return left


@pytest.mark.parametrize("early", [True, False], ids=["started early", "started by the fixture"])
def test_with_stop_later_the_session_stack_is_left_to_stop_after_the_session(monkeypatch, later, early):
    monkeypatch.setenv(conftest.stack_stop_later.VARIABLE, "1")
    monkeypatch.setenv(EARLY, "1" if early else "0")
    conftest._start_stack_early(config(2, worker=True))
    assert conftest.stack_stop_later.VARIABLE not in os.environ  # a pytest a test starts waits for its own stack
    fixture = conftest.stack.__wrapped__()
    running = next(fixture)
    assert later == []
    with pytest.raises(StopIteration):
        next(fixture)
    assert running.stopped == 0  # not waited for here
    [(process, folder)] = later
    assert process is running.process and folder == running.data_dir.parent and folder.is_dir()  # removed later
    folder.rmdir()


def test_without_stop_later_the_session_stack_is_stopped_in_the_teardown(monkeypatch, started):
    monkeypatch.delenv(conftest.stack_stop_later.VARIABLE, raising=False)
    monkeypatch.setenv(EARLY, "1")
    monkeypatch.setattr(conftest, "_stop_later", True)  # a previous session's: read again
    conftest._start_stack_early(config(2, worker=True))
    monkeypatch.setattr(FakeStack, "wait_healthy", lambda self: None, raising=False)
    fixture = conftest.stack.__wrapped__()
    next(fixture)
    with pytest.raises(StopIteration):
        next(fixture)
    assert started[0].stopped == 1


def test_xdists_controller_leaves_stop_later_to_its_workers(monkeypatch, started):
    monkeypatch.setenv(conftest.stack_stop_later.VARIABLE, "1")
    conftest._start_stack_early(config(2))
    assert os.environ.get(conftest.stack_stop_later.VARIABLE) == "1"
