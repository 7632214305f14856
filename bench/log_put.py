"""What a log segment's PUT costs the writer and SeaweedFS: the minio SDK (`MinioObjectStore._put_file`, what
`put_bytes` did) against one PUT of `shared.s3_light.put_object` (what it does now up to 64 MiB), in alternated
rounds on one fresh embedded stack; CPU seconds of this process and of `weed` from /proc, per PUT and per MB.

    python -m bench.log_put [--mb 4] [--puts 20] [--rounds 3] [--flushes 10]

`--flushes N` also times an engine's whole segment flush (`LogBatcher.flush` with a real object store: the
table, the Parquet write, the PUT; the description's publish is a no-op here) of ~4 MiB of 1,000-row ccfraud-like
records, in CPU microseconds of this process per 1,000-row request.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import time
from pathlib import Path

from bench.peers.harness import ccfraud_stack, cmdline, descendants
from shared import s3_light
from shared.objectstore import BUCKET_LOGS, MinioObjectStore
from shared.settings import S3Settings

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _own() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=4.0)
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flushes", type=int, default=0)
    args = parser.parse_args()
    data = os.urandom(int(args.mb * 1024 * 1024))
    with ccfraud_stack("railyard-logput-", []) as (stack, _):
        pids = descendants(stack.process.pid)
        weed = next(p for p in pids if "weed" in cmdline(p))
        store_pid = next(p for p in pids if "services.log_store" in cmdline(p))
        env = dict(item.split("=", 1) for item in Path(f"/proc/{store_pid}/environ").read_bytes().decode()
                   .split("\0") if "=" in item)
        settings = S3Settings(**{k.split("__", 1)[1].lower(): v for k, v in env.items()
                                 if k.startswith("RAILYARD_S3__")})
        store = MinioObjectStore(settings)
        bucket = store.bucket(BUCKET_LOGS)

        async def sdk(key: str) -> None:
            await store._put_file(BUCKET_LOGS, key, io.BytesIO(data), len(data), "application/octet-stream")

        async def light(key: str) -> None:
            assert await s3_light.put_object(settings, bucket, key, data)

        async def rounds() -> None:
            await sdk("bench/warm-sdk")
            await light("bench/warm-light")
            for r in range(args.rounds):
                for name, put in (("sdk", sdk), ("light", light)):
                    own, seaweed, started = _own(), _cpu(weed), time.perf_counter()
                    for i in range(args.puts):
                        await put(f"bench/{name}-{r}-{i}")
                    await asyncio.sleep(0.3)  # SeaweedFS finishes what it was given
                    wall = time.perf_counter() - started
                    own, seaweed = _own() - own, _cpu(weed) - seaweed
                    per = 1e3 / args.puts
                    print(f"round {r} {name:5s}: writer {own * per:6.2f} ms a PUT ({own * per / args.mb:5.2f} per MB), "
                          f"SeaweedFS {seaweed * per:6.2f} ms ({seaweed * per / args.mb:5.2f} per MB), "
                          f"{wall * per:6.1f} ms wall a PUT")

        asyncio.run(rounds())
        if args.flushes:
            asyncio.run(flushes(store, args.flushes, args.rounds))


class _Published:
    async def publish(self, subject: str, payload: bytes, headers: dict) -> None:
        pass


async def flushes(store: MinioObjectStore, count: int, rounds: int) -> None:
    import numpy as np
    import pyarrow as pa

    from services.engine.logbatcher import LogBatcher
    from shared.arrow_codec import tensor_array
    from shared.logrecords import InferenceRecord
    from shared.settings import LogSettings

    rng = np.random.default_rng(1)
    records = [InferenceRecord(1_000 + i, pa.table({"tensor": tensor_array(rng.random((1000, 29), np.float32))}),
                               pa.table({"dense_1": tensor_array(rng.random((1000, 1), np.float32))}),
                               '{"model_name":"ccfraud","model_sha":"ab"}', (5000, 6000)) for i in range(33)]
    deployment = {"name": "bench", "pipeline": "bench", "pipeline_version": "v", "workspace_id": 1}
    batcher = LogBatcher(_Published(), deployment, LogSettings(), 8 * 1024 * 1024, objects=store)
    for r in range(rounds):
        own, started = _own(), time.perf_counter()
        for _ in range(count):
            for record in records:
                batcher.add(record)
            await batcher.flush()
        own, wall = _own() - own, time.perf_counter() - started
        print(f"flush round {r}: {own / (count * len(records)) * 1e6:6.0f} us of CPU per 1,000-row request "
              f"({wall / count * 1e3:.1f} ms wall a flush)")


if __name__ == "__main__":
    main()
