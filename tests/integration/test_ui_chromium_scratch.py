"""The tests' Chromium keeps its temporary folders inside its profile (tests/integration/ui_browser.py), which
Chromium.quit() removes however the browser ended: in the temporary directory, each launch of a browser that was
killed or crashed left an org.chromium.Chromium.* folder and a scoped_dir one behind for good."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import psutil
import pytest

from tests.integration import ui_browser


def _chromium_folders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("org.chromium.")}


def _own_temporary_directory(monkeypatch) -> str | None:
    """A temporary directory of the test's own (TMPDIR and tempfile's, for the browser the test launches), so that
    what another Chromium on the machine makes or leaves in the shared one (another test process's, a developer's)
    is not counted as this browser's: compared with the shared directory's org.chromium.* names before and after, a
    Chromium launched or killed elsewhere in between failed the test. None where the browser's scratch folder would
    not fit a socket address under it (a shared temporary directory of more than ~18 characters): the test then
    compares the shared directory's org.chromium.* folders as it did."""
    base = tempfile.gettempdir()
    own = tempfile.mkdtemp(prefix="c", dir=base)
    profile_tail = len(os.fsencode("/railyard-ui-chromium-XXXXXXXX/tmp"))
    if len(os.fsencode(own)) + profile_tail + ui_browser.SINGLETON_SOCKET_TAIL > ui_browser.SOCKET_PATH_MAX:
        os.rmdir(own)
        return None
    monkeypatch.setenv("TMPDIR", own)
    monkeypatch.setattr(tempfile, "tempdir", own)
    return own


def _left_behind(own: str | None, before: set[str], profile: str) -> set[str]:
    """What the browser left in the temporary directory: in its own, anything but the profile (which is the
    browser's until quit() removes it); in the shared one, org.chromium.* folders that were not there before."""
    if own is None:
        return _chromium_folders() - before
    return set(os.listdir(own)) - {os.path.basename(profile)}


def _tree(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes and all their descendants alive now, children first, listed before any is killed; one that
    ended meanwhile is left out (psutil.children() raised NoSuchProcess for it and failed the test)."""
    tree: list[psutil.Process] = []
    for process in processes:
        try:
            tree += [*process.children(recursive=True), process]
        except psutil.NoSuchProcess:  # already gone: nothing of its own to kill; psutil cannot list its children
            continue
    return tree


def _until_dead(processes: list[psutil.Process], within: float) -> None:
    """Until each process is gone or a zombie, for at most `within` seconds; a failure naming those still alive
    then. The killed Chromium is chromedriver's child, and chromedriver (alive until quit) does not reap it:
    psutil.wait_procs waits for a pid to go, so it waited out its whole timeout on the zombies (10 s of this test's
    12). It returned silently after `within` too, and the folder check then failed on a browser still running."""
    deadline = time.monotonic() + within
    while alive := [process for process in processes if not _dead(process)]:
        if time.monotonic() >= deadline:
            raise AssertionError(f"still alive {within:g} s after SIGKILL: {', '.join(map(_described, alive))}")
        time.sleep(0.05)


def _described(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {process.name()} ({process.status()})"
    except psutil.Error:  # gone since it was looked at
        return f"{process.pid} (gone since)"


def _dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_browser_leaves_nothing_in_the_temporary_directory(monkeypatch):
    if ui_browser.MISSING:
        pytest.skip(ui_browser.MISSING)
    before = _chromium_folders()
    own = _own_temporary_directory(monkeypatch)
    try:
        browser = ui_browser.Chromium()
        if browser.scratch() is None:
            browser.quit()
            pytest.skip(f"the temporary directory {tempfile.gettempdir()} is too long for Chromium's singleton "
                        "socket inside the profile: its folders stay in the temporary directory here")
        try:
            browser.launch().get("about:blank")
            assert browser.browsers, "chromedriver's Chromium was not found among its children"
            assert _left_behind(own, before, browser.profile) == set()
            killed = []
            for process in _tree(browser.browsers):  # killed: nothing of its own cleans up
                try:
                    process.kill()
                except psutil.NoSuchProcess:  # ended with one killed before it (a loaded host shows it): dead
                    continue
                killed.append(process)
            assert killed, "no process of the browser was alive to kill"
            _until_dead(killed, within=10)
        finally:
            browser.quit()
        assert _left_behind(own, before, browser.profile) == set() and not os.path.exists(browser.profile)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


def test_a_long_temporary_directory_still_launches(monkeypatch):
    """Chromium aborts where its singleton socket's path passes a socket address's 107 bytes ("Socket path too
    long"): inside the profile in a temporary directory of more than ~28 characters (a TMPDIR on disk, as
    docs/testing.md suggests for a small /tmp) every UI test failed; there it keeps its folders where it did."""
    if ui_browser.MISSING:
        pytest.skip(ui_browser.MISSING)
    base = tempfile.gettempdir()
    pad = 50 - len(base) - len("/railyard-ui-long--12345678")
    if pad < 1:
        pytest.skip(f"the temporary directory {base} is too long already to make one of 50 characters")
    long = tempfile.mkdtemp(prefix=f"railyard-ui-long-{'x' * pad}-", dir=base)
    try:  # removed whatever fails after it is made (Chromium() too: it makes the profile folder)
        monkeypatch.setenv("TMPDIR", long)
        monkeypatch.setattr(tempfile, "tempdir", long)
        browser = ui_browser.Chromium()
        try:
            assert browser.profile.startswith(long) and browser.scratch() is None
            browser.launch().get("about:blank")
            assert browser.driver.execute_script("return 1 + 1") == 2
        finally:
            browser.quit()
    finally:
        shutil.rmtree(long, ignore_errors=True)
    assert not os.path.exists(browser.profile)
