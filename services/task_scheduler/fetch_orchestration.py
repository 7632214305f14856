"""`python -m services.task_scheduler.fetch_orchestration <sha256> <path>`: the fetch step of a task run's pod.

Downloads an orchestration's zip from object storage to `path` and checks it against its sha256, as the scheduler
does for a run in its own sandbox (`Scheduler._local_zip`). It runs as the init container of the Job rendered by
services/task_scheduler/kubernetes.py, the only container of that pod given the object-store keys; the run's own
container starts after it has exited and reads the zip read-only.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from shared.objectstore import BUCKET_ORCHESTRATIONS, MinioObjectStore, content_key
from shared.settings import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


async def fetch(settings: Settings, sha: str, target: Path) -> int:
    """Download orchestration `sha` to `target` (through a partial file renamed once it matches); its size."""
    partial = target.with_name(f".{target.name}.partial")
    got, size = await MinioObjectStore(settings.s3).download_to(BUCKET_ORCHESTRATIONS, content_key(sha), partial)
    if got != sha:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"orchestration {sha[:12]} in object storage does not match its sha256")
    partial.chmod(0o444)
    os.replace(partial, target)
    return size


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not _SHA256.match(argv[0]):
        print("usage: python -m services.task_scheduler.fetch_orchestration <sha256> <path>", file=sys.stderr)
        return 2
    size = asyncio.run(fetch(Settings(), argv[0], Path(argv[1])))
    print(f"railyard-fetch: orchestration {argv[0][:12]} ({size} bytes) ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
