"""The client SDK's own virtual environment for tests/integration/test_client_sdk.py: railyard-client installed
ALONE (no server code, no onnxruntime) from this clone's client/ package.

Cached under build/client-venv-<key>, the key hashing the client's pyproject.toml (its dependencies) and the
interpreter's version; the client itself is installed from the working tree, and a stamp in the folder holds the
hash of the client/ files it was installed from: when the tree differs from the stamp (or there is none), the client
is reinstalled, so a cached environment never holds a client other than the clone's.

`make test` starts the build in the background once the first test has reported (RAILYARD_TEST_CLIENT_VENV_EARLY=1,
see tests/conftest.py): `python -m tests.client_venv` runs `client_venv()` under a lock file beside the folder; the test
calls `client_venv()` too, waits for the lock, and finds the environment ready (or builds it itself, with the error
in the test's report, when the background build failed or never ran)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EARLY = "RAILYARD_TEST_CLIENT_VENV_EARLY"
LOCK_TIMEOUT = 1200.0  # the longest build (900 s) and a reinstall (300 s): the lock's holder is bounded too
SKIP_PARTS = {"__pycache__", "build", "dist"}


def pip_into(python: Path) -> list[str]:
    """This interpreter's pip installing into the environment of `python` (pip's --python): the client's
    environment needs no pip of its own, and bootstrapping one there cost more than the rest of the set-up."""
    return [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
            "--no-compile"]


def venv_folder(client: Path) -> Path:
    key = hashlib.sha256((client / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()[:16]
    return client.parent / "build" / f"client-venv-{key}"


def tree_hash(client: Path) -> str:
    """The hash of every file a wheel of client/ can be built from (paths and contents; no caches, no build
    output, no egg-info)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in client.rglob("*") if p.is_file()):
        rel = path.relative_to(client)
        if SKIP_PARTS & set(rel.parts) or any(part.endswith(".egg-info") for part in rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class Locked:
    """An exclusive flock on `path`, waited for at most `timeout` seconds (TimeoutError then)."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT) -> None:
        self.path, self.timeout = path, timeout

    def __enter__(self) -> Locked:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"{self.path} still held after {self.timeout:.0f} s") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def client_venv(client: Path = REPO / "client", run: Callable[..., object] = subprocess.run,
                lock_timeout: float = LOCK_TIMEOUT) -> Path:
    """The python of the client's environment, holding the client/ tree as it is now: created once per version
    of the client's pyproject.toml (~6 s with the pip cache warm, ~24 s at load 9 in a fresh clone), the client
    reinstalled from the working tree (~1 s, more under load) whenever its files differ from the stamp's."""
    folder = venv_folder(client)
    python = folder / "bin" / "python"
    stamp = folder / ".client-tree"
    with Locked(folder.with_name(folder.name + ".lock"), lock_timeout):
        current = tree_hash(client)
        if not (folder / ".ready").exists():
            shutil.rmtree(folder, ignore_errors=True)
            run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
            # the build backend too, so later runs rebuild the client without an isolated build environment
            run([*pip_into(python), str(client), "setuptools>=68", "wheel"], check=True, timeout=900)
            (folder / ".ready").touch()
        elif not stamp.exists() or stamp.read_text() != current:
            stamp.unlink(missing_ok=True)
            run([*pip_into(python), "--no-deps", "--force-reinstall", "--no-build-isolation", str(client)],
                check=True, timeout=300)
        stamp.write_text(current)
    return python


if __name__ == "__main__":
    print(client_venv(), flush=True)
