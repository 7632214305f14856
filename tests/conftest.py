"""Shared fixtures. The embedded stack is started once per test session, only if a test asks for it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests import assert_cache, client_venv, file_seconds, stack_stop_later
from tests import stack as stack_module
from tests.stack import STACK_FOLDER_PREFIX, RunningStack, remove_abandoned_stack_folders, stack_directory, start_stack


def _share_httpx_default_ssl_context() -> None:
    """One default SSL context for every httpx client this test process makes, instead of one per client.

    httpx builds a context for each Client (and `httpx.post()`/`get()` make a Client per call), loading certifi's CA
    bundle each time: 52-58 ms of CPU per call on 2026-12-02's VM against 3.8 ms with the context shared, for
    thousands of calls to http:// URLs (every poll of a waiting test included) on a suite that keeps both cores busy.
    Each call still gets its own client and connection, as before. Only the default case is shared (verify=True, no
    client certificate); a test passing its own context or certificate gets what it asked for. Services run in their
    own processes and are untouched."""
    try:
        from httpx._transports import default as transports
    except ImportError:  # another httpx layout: every client builds its own context, as httpx does
        return
    build = getattr(transports, "create_ssl_context", None)
    if build is None or getattr(build, "shared_by_tests", False):
        return
    made: dict[tuple, object] = {}

    def create_ssl_context(verify=True, cert=None, trust_env=True):
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in made:
            made[key] = build(verify=verify, cert=cert, trust_env=trust_env)
        return made[key]

    create_ssl_context.shared_by_tests = True
    transports.create_ssl_context = create_ssl_context


_share_httpx_default_ssl_context()

# hypothesis runs its "hypothesis" entry points when it is imported (test_data_plane_fuzz.py's modules in both
# workers; its pytest plugin's terminal summary in every process, the xdist controller's at the run's very end):
# importlib.metadata's scan of every installed distribution and trio's plugin (trio, selenium's, imported for it),
# ~0.3-0.5 s of CPU each time for nothing a test uses (no strategy of the suite's comes from a plugin)
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")


def _load_blas_on_one_thread() -> None:
    """This test process's BLAS libraries (numpy's and scipy's OpenBLAS) loaded with one thread each.

    The tests fit small scikit-learn models and convert them (tests/models.py, tests/image_models.py,
    test_lineage_benchmarks.py): on the suite's 2-core machine, busy with two workers and their stacks, OpenBLAS's
    other thread spins waiting for a core, and a logistic regression on 1,000 digits took 10.9-12.9 s instead of
    0.07-0.15 s (load ~9; the CCFraud model's 4.7 s instead of 3.0 s with its imports). OpenBLAS reads its thread count
    when it is loaded, so the variable is set while numpy and scipy are imported, then taken out again: the processes
    the tests start (the stack's services, the commands) get the environment they got before."""
    unset = "OPENBLAS_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
    except ImportError:  # a checkout without them: nothing here fits a model
        pass
    finally:
        if unset:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


_load_blas_on_one_thread()


def pytest_collection_modifyitems(config, items) -> None:
    """The slowest files first (tests/file_seconds.py says why); a file's own tests keep their order."""
    seconds = file_seconds.load()
    unlisted = file_seconds.unlisted_estimate(seconds)
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0],
                                             unlisted(item.nodeid.split("::", 1)[0])))


# Under pytest-xdist, the controller's account of each worker (`make test`'s last lines): the seconds its tests took
# and when it went down after the session's start (its stack's stop included). Two workers finishing far apart say
# that the files were handed out badly (tests/file_seconds.json stale); seconds of tests far below the run's length
# say that a worker waited (collection, its stack's start).
_session_started = time.monotonic()
_worker_busy: dict[str, float] = defaultdict(float)
_worker_down: dict[str, float] = {}
# ... and each file's seconds (set-up, call and teardown of its tests, as in a junit report), printed as one line
# that `python -m tests.file_seconds <the run's output>` reads: the table can be refreshed from a saved log once the
# run's clone, and its build/test-run.xml, are gone
_file_busy: dict[str, float] = defaultdict(float)


def pytest_sessionstart(session) -> None:
    global _session_started
    _session_started = time.monotonic()
    _start_client_venv_early(session.config)
    _start_stack_early(session.config)
    assert_cache.share(session.config)  # after the stack's start: its start runs while this worker rewrites


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Once the session's stack has failed to come back from test_restart.py's stop and start, each later test that
    asks for it fails at once, before its fixtures, naming why: the stack is down, and each test would otherwise run
    into its refused connections and time-outs (test_log_owners.py's 8 took 3.5 min to fail so, naming nothing)."""
    if stack_module.restart_failed and "stack" in getattr(item, "fixturenames", ()):
        pytest.fail("the session's stack did not come back from test_restart.py's stop and start: "
                    + stack_module.restart_failed, pytrace=False)


def pytest_runtest_logreport(report) -> None:
    if _client_venv_pending:
        _build_client_venv()
    node = getattr(report, "node", None)  # set by xdist on the controller's copy of a worker's report
    if node is not None:
        _worker_busy[node.gateway.id] += report.duration
        _file_busy[report.nodeid.split("::", 1)[0]] += report.duration


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    _worker_down[node.gateway.id] = time.monotonic() - _session_started


def pytest_terminal_summary(terminalreporter) -> None:
    if _worker_down:
        terminalreporter.write_line("workers: " + "; ".join(
            f"{worker} ran tests for {_worker_busy.get(worker, 0.0):.0f} s and was done {done:.0f} s after the start"
            for worker, done in sorted(_worker_down.items())))
        terminalreporter.write_line(file_seconds.LOG_LINE + json.dumps(file_seconds.table(_file_busy)))


# RAILYARD_TEST_STACK_EARLY=1 (`make test`): each process that runs tests starts its embedded stack when its
# session starts, before collection, instead of when its first test asks for the stack: `railyard up` (PostgreSQL's
# initdb, the servers' starts, ten services' imports; ~10 s alone, 15-25 s with two workers) then runs while the
# process collects the suite's ~4,400 items (seconds of CPU a worker), and the first test waits only for what is left
# of it. Under pytest-xdist the controller runs no test and starts none. The `stack` fixture takes it over as it is
# (waits for it to be healthy, stops it at the session's end); a process whose tests never ask for it stops it at its
# session's end. Without the variable (a developer's `pytest tests/unit`), nothing starts before a test asks. A
# process that runs tests takes the variable out of its environment: the pytest a test starts (test_ui_browser_required
# runs test_ui.py without a browser) starts no stack of its own.
EARLY = "RAILYARD_TEST_STACK_EARLY"
_early: tuple[contextlib.ExitStack, RunningStack] | None = None
# RAILYARD_TEST_STACK_STOP_LATER=1 (`make test`): the session's stack is sent its SIGTERM when the session ends and
# its stop (3.5-10 s) and folder's removal are left to a process of their own (tests/stack_stop_later.py), instead of
# being waited for in the teardown of the process's last test, on the run's path. Read and taken out of the
# environment as EARLY is.
_stop_later = False


def _start_stack_early(config) -> None:
    global _early, _stop_later
    if not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None):
        return  # xdist's controller: its workers start theirs (they have the variables from it)
    _stop_later = os.environ.pop(stack_stop_later.VARIABLE, None) == "1"
    if os.environ.pop(EARLY, None) != "1" or config.option.collectonly:
        return
    _early = _start_session_stack()


def _start_session_stack() -> tuple[contextlib.ExitStack, RunningStack]:
    """The session's stack, and what stops it and removes its folder (closed at the session's end). Folders of earlier
    runs' stacks that nothing uses any more are removed first (tests/stack.py says when a run leaves one)."""
    remove_abandoned_stack_folders()
    cleanup = contextlib.ExitStack()
    if not _stop_later:
        try:
            data_dir = cleanup.enter_context(stack_directory())
            running = start_stack(data_dir)
            cleanup.callback(running.stop)
        except BaseException:
            cleanup.close()
            raise
        return cleanup, running
    folder = Path(tempfile.mkdtemp(prefix=STACK_FOLDER_PREFIX))
    folder.chmod(0o755)  # as stack_directory's (tests/stack.py says why)
    try:
        running = start_stack(folder / "data")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # the process at the session's end: test_restart.py starts the stack again (RunningStack.start_again)
    cleanup.callback(lambda: stack_stop_later.stop_later(running.process, folder))
    return cleanup, running


# RAILYARD_TEST_CLIENT_VENV_EARLY=1 (`make test`): the client SDK's environment (tests/client_venv.py, a fresh
# clone's ~24 s of pip at load 9, ~9 s of CPU) is built in the background by the one process that is not an xdist
# worker, instead of in test_client_sdk's test; the test takes the build's lock and finds it done. The build starts
# when the first test's report comes in, not when the session starts: until then both cores are taken by the
# workers' collection and their stacks' starts, which the first tests wait for, and test_client_sdk runs minutes
# later (~500 s of tests are handed out before it). The variable is taken out of the environment first: workers and
# a pytest a test starts build nothing themselves.
_client_venv_build: subprocess.Popen | None = None
_client_venv_pending = False


def _start_client_venv_early(config) -> None:
    global _client_venv_pending
    if os.environ.pop(client_venv.EARLY, None) != "1" or hasattr(config, "workerinput") or config.option.collectonly:
        return
    _client_venv_pending = True


def _build_client_venv() -> None:
    global _client_venv_build, _client_venv_pending
    _client_venv_pending = False
    log = client_venv.REPO / "build" / "client-venv-early.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        _client_venv_build = subprocess.Popen([sys.executable, "-m", "tests.client_venv"], cwd=client_venv.REPO,
                                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)


def pytest_unconfigure(config) -> None:
    """A background build still running when the session ends (no test needed it): stopped; it left no .ready or
    stamp behind, so the next run builds or reinstalls again."""
    global _client_venv_build, _client_venv_pending
    build, _client_venv_build, _client_venv_pending = _client_venv_build, None, False
    if build is not None and build.poll() is None:
        os.killpg(build.pid, signal.SIGTERM)
        try:
            build.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()


def pytest_sessionfinish(session) -> None:
    """An early stack no test asked for: stopped, its directory removed."""
    global _early
    if _early is not None:
        cleanup, _ = _early
        _early = None
        cleanup.close()


@pytest.fixture(scope="session")
def stack() -> RunningStack:
    global _early
    if _early is not None:  # started at the session's start (RAILYARD_TEST_STACK_EARLY): this fixture's from now on
        (cleanup, running), _early = _early, None
    else:
        cleanup, running = _start_session_stack()
    with cleanup:
        running.wait_healthy()
        yield running
