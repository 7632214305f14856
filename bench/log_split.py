"""Where an engine replica's log path spends its CPU per 1,000-row Arrow request, split by stage, in one process.

    python -m bench.log_split [--rate 250] [--seconds 5] [--rounds 3] [--stages none,add,table,segment,put,full]
                              [--variants 'a=;b=NAME=v ...']

Each run is a fresh child process with the replica's allocator settings (`ARROW_DEFAULT_MEMORY_POOL=system
MALLOC_ARENA_MAX=1`). At `--rate` requests a second it serves a 1,000-row ccfraud request as the fast lane does
(`services/engine/fast_lane.py`: the message copied into new bytes as the bus client hands it over, the input
values a numpy view over it, the model run, the answer's bytes joined) and hands the fast lane's record
(`ArrayRecord`) to a real `LogBatcher` (segments on, publish a no-op). Stages end the batcher's segment flush
early, so that what each one adds is the difference between neighbours:

- `none`: nothing logged (`Replica.log_record` not called);
- `add`: records held and gathered, the flush drops them (the per-request bookkeeping, the batcher's wake-ups and
  the request bytes held ~0.5 s instead of freed at once);
- `table`: + the batch table (`build_batch`, in the batcher's thread);
- `segment`: + the time sort and the Parquet write (`_segment`, in its thread);
- `put`: + the PUT (`shared.s3_light.put_object` to a sink that reads the body and answers 200, a process of its
  own: its CPU is not counted);
- `full`: + the description's publish (`LogBatcher._store_segment` as it is).

It prints the process's CPU time per request (all threads), its minor page faults per request and the load
average, per run; stages are alternated `--rounds` times. `--variants` runs each stage under each variant
(environment of the child; `BENCH_LOGBATCHER_FROM=<file>` / `BENCH_LOG_SEGMENTS_FROM=<file>` load another version
of services/engine/logbatcher.py / shared/log_segments.py, as in `bench.log_memory`), for an A/B of code in one
sitting.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("none", "add", "table", "segment", "put", "full")


def usage() -> tuple[float, int]:
    """(CPU seconds of every thread, minor page faults) of this process so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, own.ru_minflt


async def sink(port_file: str) -> None:
    """An S3 stand-in: reads each request's head and its content-length of body, answers 200, closes."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while length > 0:
            length -= len(await reader.read(min(length, 1 << 20)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    await asyncio.to_thread(Path(port_file).write_text, port)
    await server.serve_forever()


async def child(stage: str, rate: float, seconds: float, port: int) -> dict:
    from shared.lean_imports import decline_unused

    decline_unused()
    for name, variable in (("shared.log_segments", "BENCH_LOG_SEGMENTS_FROM"),
                           ("services.engine.logbatcher", "BENCH_LOGBATCHER_FROM")):
        if os.environ.get(variable):  # another version of a module (an A/B of code): its file stands for it
            import importlib.util

            spec = importlib.util.spec_from_file_location(name, os.environ[variable])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa

    from services.engine import logbatcher
    from services.engine.logbatcher import LogBatcher
    from shared import s3_light
    from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
    from shared.logrecords import ArrayRecord, RecordLayout
    from shared.objectstore import BUCKET_LOGS
    from shared.settings import LogSettings, S3Settings
    from tests.models import ccfraud_onnx, sample_rows

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(ccfraud_onnx(), options, providers=["CPUExecutionProvider"])
    request = to_ipc_stream(pa.table({"tensor": tensor_array(sample_rows(1000))}))
    parsed = from_ipc(request)
    values = parsed.column(0).chunk(0).flatten()
    offset = values.buffers()[1].address + values.offset * 4 - pa.py_buffer(request).address
    count = len(values)
    settings = S3Settings(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b")

    class Store:
        async def put_bytes(self, bucket: str, key: str, data) -> None:
            if not await s3_light.put_object(settings, bucket, key, data):
                raise OSError("the sink refused the PUT")

    class Stream:
        async def publish(self, subject: str, payload: bytes, headers: dict) -> None:
            return None

    deployment = {"workspace_id": 1, "pipeline": "split", "name": "split", "pipeline_version": "v1"}
    batcher = LogBatcher(Stream(), deployment, LogSettings(), 8 << 20, Store())
    original = LogBatcher._store_segment

    async def staged(self, group, rows):  # the stages that end the segment's flush early
        if stage == "full":
            return await original(self, group, rows)
        group.sort(key=logbatcher._at_ms)
        if stage == "add":
            group.clear()
            return True
        table = await self._in_thread(self._table, group) if rows > 2000 else self._table(group)
        group.clear()
        if stage == "table":
            return True
        data, ref = await self._in_thread(self._segment, table)
        if stage == "segment":
            return True
        await self.objects.put_bytes(BUCKET_LOGS, ref.key, data)
        return True

    LogBatcher._store_segment = staged
    layout = None
    log = stage != "none"
    prefix = b"p" * 312

    def serve() -> None:
        nonlocal layout
        data = bytes(memoryview(request))  # a message's own bytes, as the bus client hands them over
        flat = np.frombuffer(data, np.float32, count, offset)
        if not np.isfinite(flat).all():
            raise ValueError("not finite")
        out = np.asarray(session.run(None, {"tensor": flat.reshape(1000, -1)})[0])
        b"".join([prefix, out.tobytes(), b"\xff\xff\xff\xff\0\0\0\0"])
        if layout is None:
            layout = RecordLayout(parsed.schema, (29,), pa.schema([("dense_1", tensor_array(out).type)]))
        if log:
            batcher.add(ArrayRecord(int(time.time() * 1000), layout, [flat], [out], 1000, "m", (1, 2)),
                        flat.nbytes + out.nbytes)

    task = asyncio.create_task(batcher.run())
    for _ in range(40):  # warm: the model, the codecs, a first segment
        serve()
    await asyncio.sleep(1.0)
    started, (spent, faults), served = time.monotonic(), usage(), 0
    while time.monotonic() - started < seconds:
        serve()
        served += 1
        await asyncio.sleep(max(0.0, started + served / rate - time.monotonic()))
    wall = time.monotonic() - started
    await asyncio.sleep(1.0)  # the log path's work after the load is the load's
    after, faulted = usage()
    await asyncio.sleep(0.6)
    task.cancel()
    return {"cpu_us": (after - spent) / served * 1e6, "faults": (faulted - faults) / served,
            "rate": served / wall, "lost": batcher.lost_rows}


async def parts(rounds: int, port: int) -> None:
    """Each step of the log path timed alone, in this process's threads' CPU time, rounds alternated; per
    1,000-row request (a segment of 35 requests, ~4.2 MB of held Arrow bytes as `engine_segment_bytes` gathers)."""
    import numpy as np
    import pyarrow as pa

    from services.engine.logbatcher import LogBatcher, _at_ms
    from shared import log_segments, s3_light
    from shared.arrow_codec import tensor_array
    from shared.log_segments import describe, encode_segment_buffer, segment_key, sort_by_time
    from shared.logrecords import (
        ArrayRecord,
        RecordLayout,
        build_batch,
        drop_oversized,
        group_records,
        storage_order,
    )
    from shared.settings import LogSettings, S3Settings
    from tests.models import sample_rows

    per = 35
    rows = sample_rows(1000).reshape(-1)
    out = np.random.default_rng(2).random((1000, 1)).astype(np.float32)
    layout = RecordLayout(pa.schema([("tensor", pa.list_(pa.float32(), 29))]), (29,),
                          pa.schema([("dense_1", tensor_array(out).type)]))
    messages = [rows.copy() for _ in range(per)]
    settings = LogSettings()
    s3 = S3Settings(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b")
    deployment = {"workspace_id": 1, "pipeline": "split", "name": "split", "pipeline_version": "v1"}
    batcher = LogBatcher(None, deployment, settings, 8 << 20, None)
    thread = __import__("concurrent.futures").futures.ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    state: dict = {}

    def records() -> list:
        return [ArrayRecord(1000 + i, layout, [messages[i]], [out], 1000, "m", (1, 2)) for i in range(per)]

    def add() -> None:
        for record in records():
            batcher.add(record, record.input_values[0].nbytes + out.nbytes)
        batcher.pending, batcher.pending_rows, batcher.pending_bytes = [], 0, 0
        batcher.held_rows = batcher.held_bytes = 0

    def table() -> None:
        group = group_records(records())[0]
        group.sort(key=_at_ms)
        state["table"] = drop_oversized(build_batch(group, "v1"), settings.max_row_bytes)

    def order() -> None:
        state["sorted"] = sort_by_time(storage_order(state["table"]))

    def parquet() -> None:
        state["data"] = encode_segment_buffer(state["sorted"], settings.row_group_rows)

    def parquet_growing() -> None:
        slack = log_segments.SINK_MAX
        log_segments.SINK_MAX = 0
        try:
            state["data"] = encode_segment_buffer(state["sorted"], settings.row_group_rows)
        finally:
            log_segments.SINK_MAX = slack

    def description() -> None:
        describe(state["sorted"], segment_key(1, "split", log_segments.ENGINE_SUFFIX), len(state["data"])).to_json()

    async def hand_off() -> None:
        await loop.run_in_executor(thread, int)

    async def put() -> None:
        assert await s3_light.put_object(s3, "b", "k", state["data"])

    async def put_small() -> None:
        assert await s3_light.put_object(s3, "b", "k", b"x" * 1000)

    steps = [("add (35 records)", add), ("table", table), ("sort", order), ("parquet", parquet),
             ("parquet, growing sink", parquet_growing), ("describe", description), ("thread hand-off", hand_off),
             ("PUT of the segment", put), ("PUT of 1 KB", put_small)]
    figures: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _ in range(rounds):
        for name, step in steps:
            started = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(3):
                if asyncio.iscoroutinefunction(step):
                    await step()
                else:
                    step()
            ended = resource.getrusage(resource.RUSAGE_SELF)
            spent = ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime
            figures[name].append(spent / 3 / per * 1e6)
            await asyncio.sleep(0.02)
    load = " ".join(os.getloadavg().__repr__().strip("()").split(", "))
    print(f"CPU us per 1,000-row request ({per} requests a segment of {len(state['data']):,} bytes), median / best "
          f"of {rounds} rounds; load {load}:")
    for name, values in figures.items():
        print(f"  {name:24s} {statistics.median(values):7.1f} / {min(values):7.1f}")
    thread.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--variants", default="base=")
    parser.add_argument("--child", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sink", default="")
    parser.add_argument("--parts", action="store_true", help="each step timed alone instead of the stages")
    args = parser.parse_args()
    if args.sink:
        import uvloop

        uvloop.run(sink(args.sink))
        return
    if args.child:
        import uvloop

        print(json.dumps(uvloop.run(child(args.child, args.rate, args.seconds, args.port))))
        return
    variants = []
    for spec in args.variants.split(";"):
        label, _, env = spec.partition("=")
        variants.append((label, dict(item.split("=", 1) for item in env.split())))
    stages = args.stages.split(",")
    port_file = Path(tempfile.gettempdir()) / f"bench-log-split-{os.getpid()}.port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "bench.log_split", "--sink", str(port_file)])
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.1)
        port = port_file.read_text()
        base = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"} | os.environ
        if args.parts:
            subprocess.run([sys.executable, "-c", "import sys, uvloop; from bench.log_split import parts; "
                            f"uvloop.run(parts({args.rounds}, {port}))"], env=base, check=True)
            return
        results: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(args.rounds):
            for stage in stages:
                for label, env in variants:
                    out = subprocess.run([sys.executable, "-m", "bench.log_split", "--child", stage, "--port", port,
                                          "--rate", str(args.rate), "--seconds", str(args.seconds)],
                                         env=base | env, capture_output=True, text=True, check=True)
                    figures = json.loads(out.stdout.strip().splitlines()[-1])
                    results.setdefault((stage, label), []).append(figures)
                    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                    print(f"round {round_ + 1} {stage:8s} {label:10s} CPU {figures['cpu_us']:6,.0f} us/request, "
                          f"{figures['faults']:6.1f} faults/request at {figures['rate']:.0f}/s, lost "
                          f"{figures['lost']}; load {load}", flush=True)
        print("median CPU us/request (faults/request):")
        for (stage, label), runs in results.items():
            print(f"  {stage:8s} {label:10s} {statistics.median(r['cpu_us'] for r in runs):6,.0f} "
                  f"({statistics.median(r['faults'] for r in runs):.1f})  runs "
                  + "/".join(f"{r['cpu_us']:.0f}" for r in runs))
    finally:
        server.terminate()
        server.wait()
        port_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
