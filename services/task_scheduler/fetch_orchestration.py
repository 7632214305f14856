"""`python -m services.task_scheduler.fetch_orchestration <sha256> <path>`: the fetch step of a task run's pod.

Downloads an orchestration's zip from object storage to `path` and checks it against its sha256, as the scheduler
does for a run in its own sandbox (`Scheduler._local_zip`). It runs as the init container of the Job rendered by
services/task_scheduler/kubernetes.py, the only container of that pod given the object-store keys; the run's own
container starts after it has exited and reads the zip read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from pathlib import Path

from shared.objectstore import BUCKET_ORCHESTRATIONS, MinioObjectStore, ObjectStore, content_key
from shared.settings import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


async def download_verified(objects: ObjectStore, sha: str, partial: Path, target: Path, mode: int) -> int:
    """Orchestration `sha` from object storage into `target` through `partial`, renamed (with `mode`) only once its
    bytes match the sha256; its size. The scheduler's own runs (`Scheduler._local_zip`) and a pod's fetch step."""
    got, size = await objects.download_to(BUCKET_ORCHESTRATIONS, content_key(sha), partial)
    if got != sha:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise RuntimeError(f"orchestration {sha[:12]} in object storage does not match its sha256")
    os.chmod(partial, mode)
    os.replace(partial, target)
    return size


async def fetch(settings: Settings, sha: str, target: Path) -> int:
    """Download orchestration `sha` to `target` (through a partial file renamed once it matches); its size."""
    return await download_verified(MinioObjectStore(settings.s3), sha, target.with_name(f".{target.name}.partial"),
                                   target, 0o444)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not _SHA256.match(argv[0]):
        print("usage: python -m services.task_scheduler.fetch_orchestration <sha256> <path>", file=sys.stderr)
        return 2
    size = asyncio.run(fetch(Settings(), argv[0], Path(argv[1])))
    print(f"railyard-fetch: orchestration {argv[0][:12]} ({size} bytes) ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
