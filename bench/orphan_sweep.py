"""`python -m bench.orphan_sweep`: the log store's orphan sweep's hourly pass over 1,000 quiet pipelines against
the real S3 server of a test stack: listings one at a time (as before 26551ff) against ORPHAN_LISTINGS_AT_ONCE,
alternated, three rounds (docs/performance.md item 39). Wall time and this process's CPU."""
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from services.log_store import handlers
from shared.log_segments import segment_key
from shared.objectstore import BUCKET_LOGS, MinioObjectStore
from shared.settings import LogSettings
from tests.stack import stack_env, start_stack

PIPELINES = 1000


async def main(stack) -> None:
    settings = stack.settings().s3.model_copy(update={"bucket_prefix": "sweepbench"})
    objects = MinioObjectStore(settings)
    await objects.ensure_buckets([BUCKET_LOGS])
    now = time.time()
    for n in range(0, PIPELINES, 10):  # a segment in every tenth pipeline, inside the window
        await objects.put_bytes(BUCKET_LOGS, segment_key(5, f"p{n}", now=now - 1800), b"x")
    rows = [{"id": n, "workspace_id": 5, "name": f"p{n}"} for n in range(PIPELINES)]

    async def pipelines(pool):
        return rows

    handlers.store.pipelines = pipelines
    deps = handlers.Deps(pool=None, objects=objects, settings=LogSettings(stream_max_age=60), reader=None,
                         membership=None, pipeline_exists=None)
    for round_ in range(3):
        for at_once in (1, handlers.ORPHAN_LISTINGS_AT_ONCE):
            handlers.ORPHAN_LISTINGS_AT_ONCE = at_once
            sweep = handlers.OrphanSweep(last=(now - 5400, now - 5400 - 60))
            load = os.getloadavg()[0]
            cpu, wall = time.process_time(), time.monotonic()
            seen = await handlers._list_windows(deps, sweep, now - 60, now - 120)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            print(f"round {round_} at_once={at_once}: {len(seen)} keys, {wall:.2f} s wall, {cpu:.2f} s CPU, "
                  f"load {load:.1f}", flush=True)
        handlers.ORPHAN_LISTINGS_AT_ONCE = 8


folder = Path(tempfile.mkdtemp(prefix="sweepbench-"))
stack = start_stack(folder / "data", stack_env(folder / "data"))
try:
    stack.wait_healthy(180)
    asyncio.run(main(stack))
finally:
    stack.stop()
    shutil.rmtree(folder, ignore_errors=True)
