"""What an engine replica's log-segment write costs its writer thread: `LogBatcher._segment` (column order, sort,
Parquet write, description) of one flush's batch table, in one process, no stack (docs/performance.md items 81 and
82: at batch 1 a replica writes ~500 rows every `engine_segment_ms`, beside the loop answering requests).

    python -m bench.segment_write [--rows 500] [--rounds 8] [--reps 200] [--against OLD/shared/log_segments.py]
                                  [--gil]

Tables of the two bench models' records (`bench.peers`: ccfraud and the seed-like MLP, both log `in.tensor`
float32[29] and `out.dense_1` float32[1] a row; the fast lane's records, one row each, as `bench.log_build` makes
them), built as the batcher builds them (`build_batch`, `drop_oversized`); eight tables a model, written in turn
(each write meets a schema object of its own, as a replica's does). `--against FILE` loads another
`log_segments.py` (e.g. `git show <rev>:shared/log_segments.py > <scratch dir>/old_log_segments.py`) and writes
with it as the batcher of that time did (`unwritable` over the schema, `sort_by_time(storage_order(...))`,
`encode_segment_buffer`, `describe`), alternating round by round with this tree's `LogBatcher._segment`; the
two must write the same bytes and the same description (but the key). Figures are this thread's CPU time a write
(the Parquet write leaves the GIL but runs in the same thread: counted), us; the machine's other load does not
count in them, but does in the cache misses it causes, hence the alternation.

`--gil`: the writes run in a thread of their own, as in a replica, while this thread sleeps 200 us at a time as
an idle event loop between requests would, and counts how late it wakes (waiting for the GIL the writer holds, or
for a core the machine's other load holds: the same in both arms, alternated). Figures: lateness summed, us a
write, and its p99.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import threading
import time
from types import ModuleType, SimpleNamespace
from typing import Any

from bench.log_build import _records
from services.engine.logbatcher import LogBatcher
from shared import logrecords
from shared.settings import LogSettings

MODELS = ("ccfraud", "seed-mlp")
VERSION = "6d1a7f2c-6a4e-4bd0-9f84-0d6f2b0c9a11"


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("log_segments_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tables(model: str, rows: int, count: int, settings: LogSettings) -> list:
    made = []
    for number in range(count):
        records = _records(logrecords, "lane", rows, 1)
        for index, record in enumerate(records):
            record.last_model = f'{{"model_name": "{model}", "model_sha": "{number:064x}"}}'
            record.at_ms += number * 1000 + (index % 3)  # a few equal times, in order (the batcher sorts records)
        records.sort(key=lambda r: r.at_ms)
        made.append(logrecords.drop_oversized(logrecords.build_batch(records, VERSION), settings.max_row_bytes))
    return made


def _writer_of(module: ModuleType | None, settings: LogSettings) -> Any:
    """A function table -> (buffer, description): this tree's `LogBatcher._segment`, or the batcher's body of
    the time with another `log_segments` module."""
    batcher = SimpleNamespace(workspace_id=7, pipeline="fraud", settings=settings)
    if module is None:
        return lambda table: LogBatcher._segment(batcher, table)  # type: ignore[arg-type]

    def old(table: Any) -> Any:
        if any(module.unwritable(f.type) for f in table.schema if f.name.startswith(("in.", "out.", "out_"))):
            return None
        table = module.sort_by_time(logrecords.storage_order(table))
        key = module.segment_key(batcher.workspace_id, batcher.pipeline, module.ENGINE_SUFFIX)
        data = module.encode_segment_buffer(table, settings.row_group_rows)
        return data, module.describe(table, key, len(data))
    return old


def _held(write: Any, tables: list, reps: int) -> tuple[float, float]:
    """(us a write this thread woke late, the p99 of its lateness) while another thread wrote."""
    done = threading.Event()

    def writer() -> None:
        for number in range(reps):
            write(tables[number % len(tables)])
        done.set()

    late: list[int] = []
    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        asked = time.perf_counter_ns()
        time.sleep(0.0002)
        late.append(max(time.perf_counter_ns() - asked - 200_000, 0))
    thread.join()
    late.sort()
    return sum(late) / reps / 1000, late[int(len(late) * 0.99)] / 1000


def _round(write: Any, tables: list, reps: int) -> float:
    cpu = time.thread_time_ns()
    for number in range(reps):
        write(tables[number % len(tables)])
    return (time.thread_time_ns() - cpu) / reps / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="batch-1 records (rows) a segment")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--against", help="another log_segments.py to alternate with this tree's")
    parser.add_argument("--gil", action="store_true", help="writes in a thread; how late this one wakes")
    args = parser.parse_args()
    settings = LogSettings()
    writers = {"this tree": _writer_of(None, settings)}
    if args.against:
        writers = {"against": _writer_of(_load(args.against), settings), **writers}
    tables = {model: _tables(model, args.rows, 8, settings) for model in MODELS}
    for model, made in tables.items():  # the same bytes and description (but the key) from each writer
        for table in made:
            results = [write(table) for write in writers.values()]
            for data, ref in results[1:]:
                assert data.equals(results[0][0]), f"{model}: the Parquet bytes differ"
                assert ref.model_dump(exclude={"key"}) == results[0][1].model_dump(exclude={"key"}), model
    gc.collect()
    gc.freeze()
    what = "us a write this thread woke late (p99 of a wake-up's lateness)" if args.gil else \
        "CPU us a write"
    print(f"segment write of {args.rows} batch-1 rows, {args.reps} writes a round, {what}; "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cpus: dict[tuple[str, str], list[float]] = {}
    longest: dict[tuple[str, str], list[float]] = {}
    for number in range(args.rounds):
        line = []
        for model in MODELS:
            order = list(writers.items()) if number % 2 == 0 else list(reversed(writers.items()))
            for name, write in order:
                if args.gil:
                    cpu, stall = _held(write, tables[model], args.reps)
                    longest.setdefault((model, name), []).append(stall)
                    line.append(f"{model} {name} {cpu:.0f} ({stall:.0f})")
                else:
                    cpu = _round(write, tables[model], args.reps)
                    line.append(f"{model} {name} {cpu:.0f}")
                cpus.setdefault((model, name), []).append(cpu)
        print(f"round {number + 1}: " + ", ".join(line))
    for (model, name), values in cpus.items():
        extra = f"; p99 lateness median {statistics.median(longest[model, name]):.0f} us" if args.gil else ""
        print(f"{model} {name}: median {statistics.median(values):.0f}, best {min(values):.0f} us a write{extra}")
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
