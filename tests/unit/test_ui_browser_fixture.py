"""The files that mix API tests with a UI test take the headless Chromium from tests/integration/ui_browser.py,
whose import needs no browser: without one, their API tests are collected (and run), only the UI test skips. Before,
they took it from test_ui.py, whose import skips its whole module without a browser (pytest.skip at module level),
so every API test in them was skipped too. Collected in a child pytest (no stack is started: collection only) with
a Chromium path that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# file -> an API test of it that needs no browser
API_TESTS = {
    "test_task_list_pages.py": "test_task_and_orchestration_lists_page_through_http_and_the_sdk",
    "test_models_list_pages.py": "test_models_list_pages_through_http_the_sdk_and_the_cli",
    "test_model_versions_list_pages.py": "test_model_versions_page_through_http_the_sdk_and_the_cli",
    "test_workspace_users_list_pages.py": "test_workspace_users_page_through_http_and_the_sdk",
    "test_workspaces_list_pages.py": "test_workspaces_list_pages_through_http_and_the_sdk",
}


def test_api_tests_are_collected_without_a_browser(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RAILYARD_TEST_REQUIRE_BROWSER", "RAILYARD_TEST_CHROM"))}
    env["RAILYARD_TEST_CHROMIUM"] = str(tmp_path / "no-chromium")
    env["RAILYARD_TEST_CHROMEDRIVER"] = str(tmp_path / "no-chromedriver")
    files = [f"tests/integration/{name}" for name in API_TESTS]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *files], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = done.stdout
    for name, test in API_TESTS.items():
        assert f"tests/integration/{name}::{test}" in collected, collected[-3000:]
    assert "skipped" not in collected, collected[-3000:]
