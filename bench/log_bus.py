"""What the inference-log path costs nats-server alone, per logged row, for forms and sizes of the same log batches.

    python -m bench.log_bus [--rounds 4] [--seconds 4] [--rows 1000] [--variants dense:7:20,runs:7:20]

Starts a bare nats-server configured as the embedded stack's (`sync_interval: always`, the same max_payload) with
the INFERENCE_LOGS stream and the log store's durable consumer exactly as the stack creates them
(`shared.bus.stream_configs`, `log_store_consumer_config`), then alternates rounds of the variants: an engine
publishing one batch of 7 records of `--rows` ccfraud rows every 20 ms (as the log batcher does under
batch-1000 load at ~350 requests a second; a variant sets both), and a consumer fetching and acknowledging
them as the log store does (after a 250 ms gathering). Each round reads nats-server's CPU time from /proc:
microseconds per 1,000 logged rows. Forms: `dense` (a value per row in every column, the batches before item
19 of docs/performance.md) and `runs` (`encode_runs`: the per-record columns run-end encoded). One server for
every variant, alternated, so all see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import nats
import pyarrow as pa

from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.bus import log_store_consumer_config, stream_configs
from shared.embedded.servers import NATS_MAX_PAYLOAD, find_binary
from shared.logrecords import BATCH_ID, MSG_ID, InferenceRecord, build_batch, encode_runs
from shared.settings import Settings
from tests.models import sample_rows

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def payloads(requests: int, rows: int, forms: str = "dense,runs") -> dict[str, bytes]:
    """One engine flush's log batch (`requests` records of `rows` ccfraud rows) in both forms."""
    model = json.dumps({"model_name": "ccfraud", "model_sha": "e22a0831aafd9917f3cc87a15ed267797f80e2afa12ad7d8810"})
    records = []
    for index in range(requests):
        features = sample_rows(rows, seed=index)
        records.append(InferenceRecord(1_764_600_000_000 + index, pa.table({"tensor": tensor_array(features)}),
                                       pa.table({"dense_1": tensor_array(features[:, :1] * 0.5)}), model,
                                       (112_967 + index, 267_146 + index)))
    table = build_batch(records, "6d1a7f2c-6a4e-4bd0-9f84-0d6f2b0c9a11")
    made = {"dense": lambda: to_ipc_stream(table),
            "runs": lambda: to_ipc_stream(encode_runs(table, [rows] * requests))}
    return {name: made[name]() for name in forms.split(",")}


async def one_round(url: str, payload: bytes, seconds: float, pid: int, interval: float = 0.02
                    ) -> tuple[int, float]:
    """Publish every `interval` s for `seconds` while a consumer gathers 250 ms, then acknowledges; (batches,
    CPU s)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    js = nc.jetstream()
    sub = await js.pull_subscribe("logs.inference.>", durable=subjects.INFERENCE_LOGS_DURABLE,
                                  stream=subjects.INFERENCE_LOGS_STREAM)
    published = 0
    consumed = 0
    stop = asyncio.Event()

    async def consume() -> None:
        nonlocal consumed
        pending: list = []
        opened = 0.0
        while not (stop.is_set() and consumed + len(pending) >= published):
            try:
                msgs = await sub.fetch(batch=64, timeout=0.25)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            if msgs and not pending:
                opened = time.monotonic()
            pending += msgs
            if pending and (time.monotonic() - opened >= 0.25 or stop.is_set()):
                for msg in pending:
                    await msg.ack()
                consumed += len(pending)
                pending = []

    before = _cpu(pid)
    consumer = asyncio.create_task(consume())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = str(uuid.uuid4())
        await js.publish("logs.inference.bench", payload, headers={MSG_ID: batch, BATCH_ID: batch})
        published += 1
        await asyncio.sleep(interval)
    stop.set()
    await asyncio.wait_for(consumer, 30)
    await nc.flush()
    await asyncio.sleep(0.5)  # the last acks' removals
    used = _cpu(pid) - before
    await nc.close()
    return published, used


async def main_async(args: argparse.Namespace) -> None:
    variants: dict[str, tuple[bytes, float, int]] = {}  # name -> (payload, interval, rows a batch)
    for spec in args.variants.split(","):
        form, requests, interval_ms = spec.split(":")
        payload = payloads(int(requests), args.rows, form)[form]
        rows = int(requests) * args.rows
        variants[spec] = (payload, float(interval_ms) / 1000, rows)
        print(f"{spec}: {len(payload):,} bytes a batch of {rows:,} rows ({len(payload) / rows:.1f} a row)")
    folder = Path(tempfile.mkdtemp(prefix="railyard-logbus-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "nats.conf"
    config.write_text(f"max_payload: {NATS_MAX_PAYLOAD}\njetstream {{\n  sync_interval: always\n}}\n")
    argv = [find_binary("nats-server"), "--config", str(config), "--addr", "127.0.0.1", "--port", str(port),
            "--jetstream", "--store_dir", str(folder / "js")]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(50):
            try:
                nc = await nats.connect(url, max_reconnect_attempts=0)
                break
            except Exception:
                await asyncio.sleep(0.1)
        js = nc.jetstream()
        settings = Settings()
        for stream in stream_configs(settings):
            await js.add_stream(stream)
        await js.add_consumer(subjects.INFERENCE_LOGS_STREAM, log_store_consumer_config(settings.logs.ack_wait))
        await nc.close()
        results: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                payload, interval, rows = variants[name]
                batches, used = await one_round(url, payload, args.seconds, server.pid, interval)
                per = used / (batches * rows) * 1e9  # us per 1,000 rows
                results[name].append(per)
                print(f"round {round_ + 1} {name}: {batches} batches, nats-server {per:,.0f} us of CPU per "
                      f"1,000 rows (load {os.getloadavg()[0]:.1f})")
        for name, values in results.items():
            print(f"{name}: {', '.join(f'{v:,.0f}' for v in values)} us per 1,000 rows")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--variants", default="dense:7:20,runs:7:20",
                        help="form:records a batch:ms between batches, comma separated (forms: dense, runs)")
    parser.add_argument("--rows", type=int, default=1000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
