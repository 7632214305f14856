"""A bare nats-server for unit tests of bus code (no stack): on a port it picks itself, read from its log, so no
other process can take the port between a free-port pick and the bind."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from shared.embedded.servers import find_binary


@contextlib.contextmanager
def local_nats_server(directory: Path, jetstream: bool = False) -> Iterator[str]:
    """Yields the server's URL; `jetstream` stores under `directory`/js."""
    log = directory / "nats.log"
    extra = ["-js", "-sd", str(directory / "js")] if jetstream else []
    process = subprocess.Popen([find_binary("nats-server"), *extra, "-a", "127.0.0.1", "-p", "-1", "-l", str(log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"client connections on 127\.0\.0\.1:(\d+)",
                                      log.read_text() if log.exists() else "")):
            assert process.poll() is None and time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        process.wait(10)
