"""Without a headless browser the web UI's browser tests (tests/integration/test_ui*.py) skip, saying why; with
RAILYARD_TEST_REQUIRE_BROWSER=1 (set by .ci/run) they fail instead, before the embedded stack is started. Before the
switch a CI machine that had lost its Chromium passed without testing the UI. Run here as `make test` runs pytest, in
a child process whose Chromium path leads nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI_TESTS = "tests/integration/test_ui.py"


def run_without_a_browser(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RAILYARD_TEST_REQUIRE_BROWSER", "RAILYARD_TEST_CHROM"))}
    env["RAILYARD_TEST_CHROMIUM"] = str(tmp_path / "no-chromium")
    env["RAILYARD_TEST_CHROMEDRIVER"] = str(tmp_path / "no-chromedriver")
    if require is not None:
        env["RAILYARD_TEST_REQUIRE_BROWSER"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", UI_TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_no_browser_skips_the_ui_tests_saying_why(tmp_path):
    for require in (None, "0"):
        done = run_without_a_browser(tmp_path, require)
        # 5: no test ran, the file alone being skipped whole (in a run of the suite the others make it 0)
        assert done.returncode == 5, done.stdout[-3000:] + done.stderr[-3000:]
        assert "1 skipped" in done.stdout and "no headless browser" in done.stdout, done.stdout[-3000:]
        assert str(tmp_path / "no-chromium") in done.stdout


def test_no_browser_fails_the_ui_tests_when_a_browser_is_required(tmp_path):
    done = run_without_a_browser(tmp_path, "1")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "skipped" not in out and " errors in " in out and "passed" not in out, out[-3000:]
    assert "no headless browser" in out and "RAILYARD_TEST_REQUIRE_BROWSER=1 makes that a failure" in out, out[-3000:]
