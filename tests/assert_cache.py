"""The xdist workers of one run share the work of rewriting the test modules' asserts.

pytest rewrites the asserts of every test module it imports and caches the result next to it
(`__pycache__/*.cpython-311-pytest-<version>.pyc`, checked against the source's hash). In a fresh clone (CI) there is
no cache yet, and under `make test` both workers collect the whole suite at the same moment, in the same order: each
rewrites all ~520 modules itself (~11.5 s of CPU a worker on the 2-core VM, more than half of its collection's
~22 s), neither finding the other's cache in time. Here each worker first rewrites and caches its share (every
count-th module of the session's test files, from its own index) before it collects; collection then finds the
others' shares cached, or rewrites a module itself if its owner has not got to it yet (the cache is written
atomically; a module rewritten twice is what happened before). The modules run as pytest's own import would run
them: the same rewrite (pytest's, with this session's config) and the same checked cache.

Uses pytest's private cache helpers (_pytest.assertion.rewrite); if they are not as expected (another pytest), or the
process writes no bytecode (PYTHONDONTWRITEBYTECODE), nothing is done and collection rewrites as it always did."""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
from pathlib import Path


def share(config) -> int:
    """Rewrite and cache this xdist worker's share of the session's test modules; the number it rewrote (0 when it
    is no worker of two or more, or the helpers are missing)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or sys.dont_write_bytecode:
        return 0
    count = int(workerinput.get("workercount") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    worker = str(workerinput.get("workerid", ""))
    if count < 2 or not worker.startswith("gw") or not worker[2:].isdigit():
        return 0
    try:  # an optimisation only: whatever goes wrong here is left to collection, which rewrites and reports as before
        helpers = _helpers(config)
        if helpers is None:
            return 0
        mine = modules(config)[int(worker[2:]) % count::count]
        return sum(_rewrite(path, config, helpers) for path in mine)
    except Exception:  # noqa: BLE001 - a raise here would end the worker's session before it collected anything
        return 0


def modules(config) -> list[Path]:
    """The test modules and conftest files under the session's arguments (a file or a folder each), sorted: the
    same list in every worker of the run. Folders collection does not enter are not entered either (norecursedirs:
    `.*`, `build`, `node_modules`, ...; virtual environments; --ignore): `pytest -n 2 .` would otherwise rewrite
    every test_*.py of .venv's packages and write pytest's caches among them."""
    patterns = config.getini("python_files") or ["test_*.py", "*_test.py"]
    skip = [p for p in (config.getini("norecursedirs") or []) if "/" not in p] + ["__pycache__"]
    ignored = {Path(config.invocation_params.dir, p).resolve() for p in (config.getoption("ignore", None) or [])}
    found: set[Path] = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, str(arg).split("::", 1)[0]).resolve()
        if path.is_file() and path.suffix == ".py":
            found.add(path)
            continue
        for folder, dirs, files in os.walk(path) if path.is_dir() else ():
            dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in skip)
                             and not (Path(folder, d) / "pyvenv.cfg").exists() and Path(folder, d) not in ignored)
            for name in files:
                if name.endswith(".py") and (name == "conftest.py" or any(fnmatch.fnmatch(name, p) for p in patterns)):
                    found.add(Path(folder, name))
    return sorted(found)


def _helpers(config):
    try:
        from _pytest.assertion import rewrite
    except ImportError:
        return None
    state = config.stash.get(rewrite.assertstate_key, None) if hasattr(rewrite, "assertstate_key") else None
    names = ("_rewrite_test", "_write_pyc", "_read_pyc", "get_cache_dir", "try_makedirs", "PYC_TAIL")
    if state is None or not all(hasattr(rewrite, name) for name in names):
        return None
    try:  # pytest 9's shapes: (fn, config) -> (source_hash, code); (state, code, source_hash, pyc)
        if list(inspect.signature(rewrite._rewrite_test).parameters) != ["fn", "config"] or \
                list(inspect.signature(rewrite._write_pyc).parameters) != ["state", "co", "source_hash", "pyc"]:
            return None
    except (TypeError, ValueError):
        return None
    return rewrite, state


def _rewrite(path: Path, config, helpers) -> bool:
    """path's rewritten code cached where pytest's import looks for it, unless a valid cache is there already."""
    rewrite, state = helpers
    cache_dir = rewrite.get_cache_dir(path)
    pyc = cache_dir / (path.name[:-3] + rewrite.PYC_TAIL)
    if not rewrite.try_makedirs(cache_dir) or rewrite._read_pyc(path, pyc) is not None:
        return False
    try:
        source_hash, code = rewrite._rewrite_test(path, config)
    except (OSError, SyntaxError, ValueError):  # collection reports it, as before
        return False
    return bool(rewrite._write_pyc(state, code, source_hash, pyc))
