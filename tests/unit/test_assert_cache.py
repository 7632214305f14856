"""tests/assert_cache.py: each xdist worker rewrites and caches its share of the test modules before collecting, and
pytest's own import then finds every share cached, the same code it would have made itself."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pytest.assertion import rewrite

from tests import assert_cache


class WorkerConfig:
    """The running session's config (its rewrite settings and cache helpers), seen as an xdist worker's of a run
    over `args` from `folder`."""

    def __init__(self, real, folder: Path, args: list[str], worker: str | None, count: int = 2) -> None:
        self._real = real
        self.args = args
        self.invocation_params = SimpleNamespace(dir=folder)
        self.workerinput = None if worker is None else {"workerid": worker, "workercount": count}

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def suite(tmp_path) -> Path:
    """A tests folder: five test modules, a conftest, a helper that is no test module, one module that cannot be
    parsed."""
    folder = tmp_path / "suite"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        (folder / f"test_m{i}.py").write_text(f"def test_{i}():\n    x = {i}\n    assert x + 1 == {i} + 2, 'no'\n")
    (folder / "sub" / "test_deep.py").write_text("def test_deep():\n    assert [1] == [2]\n")
    (folder / "sub" / "conftest.py").write_text("def helper():\n    assert True\n")
    (folder / "helpers.py").write_text("assert True\n")
    (folder / "test_broken.py").write_text("def test_(:\n")
    return folder


def cached(path: Path):
    return rewrite._read_pyc(path, rewrite.get_cache_dir(path) / (path.name[:-3] + rewrite.PYC_TAIL))


@pytest.fixture(autouse=True)
def writes_bytecode(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def test_the_modules_are_the_test_files_and_conftests_under_the_arguments(request, suite):
    config = WorkerConfig(request.config, suite.parent, ["suite"], "gw0")
    names = [p.relative_to(suite).as_posix() for p in assert_cache.modules(config)]
    assert names == ["sub/conftest.py", "sub/test_deep.py", "test_broken.py", "test_m0.py", "test_m1.py",
                     "test_m2.py", "test_m3.py"]
    one = WorkerConfig(request.config, suite, ["test_m1.py::test_1", "sub"], "gw0")
    assert [p.name for p in assert_cache.modules(one)] == ["conftest.py", "test_deep.py", "test_m1.py"]


def test_two_workers_share_the_modules_and_pytest_finds_each_cached_as_it_would_make_it(request, suite):
    gw0 = WorkerConfig(request.config, suite.parent, ["suite"], "gw0")
    gw1 = WorkerConfig(request.config, suite.parent, ["suite"], "gw1")
    everything = assert_cache.modules(gw0)
    assert assert_cache.share(gw0) == 3  # sub/conftest, test_broken (not rewritten: a syntax error), test_m1, test_m3
    done_by_gw0 = {p.name for p in everything if cached(p) is not None}
    assert done_by_gw0 == {"conftest.py", "test_m1.py", "test_m3.py"}
    assert assert_cache.share(gw1) == 3
    for path in everything:
        if path.name == "test_broken.py":
            assert cached(path) is None  # left to collection, which reports the error as before
            continue
        code = cached(path)
        assert code is not None, path
        _, made = rewrite._rewrite_test(path, request.config)  # what pytest's import would have made and run
        assert code == made and code.co_filename == str(path)
    assert assert_cache.share(gw0) == 0  # cached already: nothing rewritten again


@pytest.mark.parametrize("worker,count", [(None, 2), ("gw0", 1), ("main", 2)],
                         ids=["not a worker", "one worker", "not an xdist worker id"])
def test_nothing_is_rewritten_outside_a_run_of_two_workers_or_more(request, suite, worker, count):
    assert assert_cache.share(WorkerConfig(request.config, suite.parent, ["suite"], worker, count)) == 0
    assert all(cached(p) is None for p in assert_cache.modules(WorkerConfig(request.config, suite.parent,
                                                                            ["suite"], "gw0")))


def test_nothing_is_rewritten_when_the_process_writes_no_bytecode(request, suite, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert assert_cache.share(WorkerConfig(request.config, suite.parent, ["suite"], "gw0")) == 0


def test_another_pytests_helpers_leave_collection_as_it_was(request, suite, monkeypatch):
    monkeypatch.setattr(rewrite, "_write_pyc", lambda state, co, source_stat, pyc: False)  # pytest 8.0's shape
    assert assert_cache.share(WorkerConfig(request.config, suite.parent, ["suite"], "gw0")) == 0
    assert all(cached(p) is None for p in suite.rglob("*.py"))


def test_folders_collection_does_not_enter_are_not_entered(request, suite):
    """norecursedirs (`.*`, `build`, `node_modules`...), a virtual environment, --ignore: `pytest -n 2 .` in a clone
    would otherwise rewrite the test files of .venv's packages."""
    for folder in (".venv/lib/site-packages/pkg", "node_modules/pkg", "build", "env/lib/pkg", "skipped"):
        (suite / folder).mkdir(parents=True)
        (suite / folder / "test_theirs.py").write_text("assert True\n")
    (suite / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    config = WorkerConfig(request.config, suite.parent, ["suite"], "gw0")
    config.getoption = lambda name, default=None: [str(suite / "skipped")] if name == "ignore" else default
    assert [p.relative_to(suite).as_posix() for p in assert_cache.modules(config)] == [
        "sub/conftest.py", "sub/test_deep.py", "test_broken.py", "test_m0.py", "test_m1.py", "test_m2.py", "test_m3.py"]


def test_an_unexpected_error_leaves_collection_as_it_was(request, suite, monkeypatch):
    def fails(fn, config):
        raise RecursionError("maximum recursion depth exceeded during compilation")

    monkeypatch.setattr(rewrite, "_rewrite_test", fails)
    monkeypatch.setattr(assert_cache, "_helpers", lambda config: (rewrite, config.stash[rewrite.assertstate_key]))
    assert assert_cache.share(WorkerConfig(request.config, suite.parent, ["suite"], "gw0")) == 0  # did not raise
    assert all(cached(p) is None for p in suite.rglob("*.py"))
