"""The shipped text classifier (examples/ml_backend/text_classifier) as the engine runs it: the `deployed` fixture,
its `railyard-ml deploy railyard` package loaded by the engine's ByopRuntime (what the sandboxed worker runs). Shared
by test_engine_traceback_paths.py and test_ml_backend_example_deployed_refusal.py, which each had a copy (session
37's `duplicates` D1; the second's lacked 0db22682's removal of the cached example module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from railyard_ml.railyard_step import package

from services.engine.runtimes import ByopRuntime

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "ml_backend" / "text_classifier" / "text_classifier.py"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text" choice="single">'
          '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>')


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    """The example's package loaded as the engine loads it (sys.path and the modules it adds undone after)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    # tests/ml_backend/test_examples.py imports the example's text_classifier from examples/ at collection, in every
    # xdist worker: cached, it would stand in for the package's own copy (a replica's worker process has no such one)
    monkeypatch.delitem(sys.modules, "text_classifier", raising=False)
    before = set(sys.modules)
    folder = tmp_path / "tc"
    made = subprocess.run([str(Path(sys.executable).with_name("railyard-ml")), "init", str(folder), "--script",
                           str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    archive, _ = package(folder, label_config=CONFIG)
    (tmp_path / "tc.zip").write_bytes(archive)
    (tmp_path / "work").mkdir()
    runtime = ByopRuntime(tmp_path / "tc.zip", tmp_path / "work")
    runtime.load()
    yield runtime
    runtime.unload()
    for name in set(sys.modules) - before:
        if name.startswith("railyard_byop_"):
            del sys.modules[name]
