"""Liveness and readiness as files, for container probes that should not open a bus connection of their own.

Only the gateway listens on a port; every other service is reached over NATS, where `<name>.health` is answered by
whichever replica of the queue group takes it, so a probe asking it from inside one pod may hear another pod. So,
when `RAILYARD_PROBE_DIR` is set (the Kubernetes manifests set it, the embedded stack and docker-compose do not), a
serving service keeps two files there, written by its own event loop:

- `live`: rewritten every PROBE_INTERVAL seconds while the event loop turns. A loop that is stuck (or a process
  that stopped serving) stops rewriting it; the liveness probe fails when it is older than a minute.
- `ready`: present while the service's own health check (`shared.service.check_health`, the report `<name>.health`
  answers: bus connected, its database and object store answering) is ok, removed when it is not and when the
  service starts draining on SIGTERM.

The probe is a shell one-liner on the file's age (deploy/kubernetes/services.yaml), so it costs no Python start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("railyard.probe_files")

PROBE_INTERVAL = 5.0
LIVE = "live"
READY = "ready"


def _touch(path: Path) -> None:
    """Write the file anew (its mtime is what the probe reads) through a rename, so a probe never reads half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(f"{os.getpid()}\n")
    os.replace(partial, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def keep_probe_files(folder: Path, healthy: Callable[[], Awaitable[bool]],
                           interval: float = PROBE_INTERVAL) -> None:
    """Until cancelled: rewrite `folder/live` every `interval` seconds, and keep `folder/ready` while `healthy()`
    says so. On cancellation `ready` is removed (the service is stopping) and `live` is left to age."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    try:
        while True:
            await asyncio.to_thread(_touch, folder / LIVE)
            try:
                ok = await healthy()
            except Exception:  # a failing check is "not ready", never a reason to stop proving liveness
                log.exception("health check for the readiness file failed")
                ok = False
            await asyncio.to_thread(_touch if ok else _remove, folder / READY)
            await asyncio.sleep(interval)
    finally:
        _remove(folder / READY)
