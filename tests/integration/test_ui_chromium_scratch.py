"""The tests' Chromium keeps its temporary folders inside its profile (tests/integration/ui_browser.py), which
Chromium.quit() removes however the browser ended: in the temporary directory, each launch of a browser that was
killed or crashed left an org.chromium.Chromium.* folder and a scoped_dir one behind for good."""

from __future__ import annotations

import os
import tempfile

import psutil
import pytest

from tests.integration import ui_browser


def _chromium_folders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("org.chromium.")}


def test_a_killed_browser_leaves_nothing_in_the_temporary_directory():
    if ui_browser.MISSING:
        pytest.skip(ui_browser.MISSING)
    before = _chromium_folders()
    browser = ui_browser.Chromium()
    try:
        browser.launch().get("about:blank")
        assert _chromium_folders() == before
        for process in browser.browsers:  # killed: nothing of its own cleans up
            for child in [*process.children(recursive=True), process]:
                child.kill()
        psutil.wait_procs(browser.browsers, timeout=10)
    finally:
        browser.quit()
    assert _chromium_folders() == before and not os.path.exists(browser.profile)
