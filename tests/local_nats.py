"""A bare nats-server for unit tests of bus code (no stack): on a port it picks itself, read from its log, so no
other process can take the port between a free-port pick and the bind. And `subscribed`, for unit and stack tests
alike: until the server has a connection's new subscriptions."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shared.embedded.servers import JETSTREAM_FILE_STORE, find_binary

if TYPE_CHECKING:
    import nats


@contextlib.contextmanager
def local_nats_server(directory: Path, jetstream: bool = False, file_store: int | None = JETSTREAM_FILE_STORE,
                      config: Path | None = None) -> Iterator[str]:
    """Yields the server's URL; `jetstream` stores under `directory`/js, with `file_store` bytes of file storage:
    the embedded stack's by default (nats-server's own, None, is 75 % of the disk free at its start: too little for
    the platform's stream caps on a disk with under ~12 GiB free). `config`: this configuration file (its users and
    permissions, say), with or without JetStream; with it, `file_store` is the file's to say. Before, `config` was
    read only with `jetstream`: a server given users and no JetStream let anyone publish anything."""
    log = directory / "nats.log"
    extra: list[str] = []
    if jetstream:
        if config is None:
            config = directory / "nats-js.conf"
            config.write_text(f"jetstream {{\n  max_file_store: {file_store}\n}}\n" if file_store else "")
        extra = ["-js", "-sd", str(directory / "js")]
    if config is not None:
        extra = ["-c", str(config), *extra]
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


async def subscribed(nc: nats.NATS) -> None:
    """Returns once the server has read every SUB (and PUB, UNSUB) `nc` made so far: two flushes, not one. nats-py
    (2.16, nats/aio/client.py) keeps a SUB in its pending buffer for its flusher task, while `flush()` writes its
    PING straight to the socket (`_send_ping`), ahead of it: the first PONG only says the server read the PING, and
    another connection's publish right after can reach the server before the SUB (nobody hears it: a test that
    asserts it heard nothing passes without listening; a request meets "no responders"). While the first flush
    waits for its PONG, the flusher writes the pending SUBs, so the second flush's PING goes out after them, and the
    server reads a connection's commands in order."""
    await nc.flush()
    await nc.flush()
