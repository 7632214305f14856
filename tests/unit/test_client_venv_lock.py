"""tests/client_venv.py's hand-off between `make test`'s background build and test_client_sdk: one builds under the
lock, the other waits for it and finds the environment holding the client/ tree as it is; a cached environment
whose client differs from the tree is reinstalled; a wait for the lock is bounded. pip is a fake here (it records the
commands and makes bin/python); the real build is test_client_sdk's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests import client_venv as cv


@pytest.fixture
def client(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "client"
    (folder / "railyard_client").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'railyard-client'\n")
    (folder / "railyard_client" / "__init__.py").write_text("X = 1\n")
    return folder


class FakePip:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay

    def __call__(self, args, check, timeout):
        assert check and timeout
        if args[1:3] == ["-m", "venv"]:
            self.calls.append("venv")
            (Path(args[-1]) / "bin").mkdir(parents=True)
            (Path(args[-1]) / "bin" / "python").touch()
        else:
            self.calls.append("reinstall" if "--force-reinstall" in args else "install")
        time.sleep(self.delay)


def test_a_fresh_build_then_the_same_tree_is_not_reinstalled(client):
    pip = FakePip()
    python = cv.client_venv(client, run=pip)
    assert python == cv.venv_folder(client) / "bin" / "python" and python.exists()
    assert pip.calls == ["venv", "install"]
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install"], "the environment holds this tree's client already"


def test_a_changed_client_file_is_reinstalled_a_changed_pyproject_builds_anew(client):
    pip = FakePip()
    cv.client_venv(client, run=pip)
    (client / "railyard_client" / "__init__.py").write_text("X = 2\n")
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install", "reinstall"]
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install", "reinstall"]
    (client / "pyproject.toml").write_text("[project]\nname = 'railyard-client'\ndependencies = ['httpx']\n")
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install", "reinstall", "venv", "install"]


def test_caches_and_build_output_are_not_the_client(client):
    before = cv.tree_hash(client)
    for junk in ("railyard_client/__pycache__/x.pyc", "build/lib/x.py", "railyard_client.egg-info/PKG-INFO"):
        (client / junk).parent.mkdir(parents=True, exist_ok=True)
        (client / junk).write_text("junk")
    assert cv.tree_hash(client) == before
    (client / "railyard_client" / "new.py").write_text("")
    assert cv.tree_hash(client) != before


def test_an_environment_without_a_stamp_or_interrupted_mid_reinstall_is_reinstalled(client):
    pip = FakePip()
    cv.client_venv(client, run=pip)
    (cv.venv_folder(client) / ".client-tree").unlink()  # an older cache, or a reinstall killed half-way
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install", "reinstall"]


def test_an_interrupted_build_is_built_again(client):
    folder = cv.venv_folder(client)
    (folder / "bin").mkdir(parents=True)  # no .ready: the build was killed
    pip = FakePip()
    cv.client_venv(client, run=pip)
    assert pip.calls == ["venv", "install"]


def test_the_second_caller_waits_for_the_first_build_and_finds_it_done(client):
    background = FakePip(delay=0.5)
    builder = threading.Thread(target=cv.client_venv, args=(client,), kwargs={"run": background})
    builder.start()
    while not background.calls:
        time.sleep(0.01)
    test = FakePip()
    started = time.monotonic()
    python = cv.client_venv(client, run=test)
    waited = time.monotonic() - started
    builder.join()
    assert background.calls == ["venv", "install"] and test.calls == []
    assert python.exists() and waited > 0.3, "the test waited for the build instead of racing it"


def test_a_lock_held_too_long_is_a_timeout_not_a_hang(client):
    folder = cv.venv_folder(client)
    with cv.Locked(folder.with_name(folder.name + ".lock")):
        with pytest.raises(TimeoutError, match="still held"):
            cv.client_venv(client, run=FakePip(), lock_timeout=0.3)
