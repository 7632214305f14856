"""What an engine replica's log-segment write costs its writer thread: `LogBatcher._segment` (column order, sort,
Parquet write, description) of one flush's batch table, in one process, no stack (docs/performance.md items 81 and
82: at batch 1 a replica writes ~500 rows every `engine_segment_ms`, beside the loop answering requests).

    python -m bench.segment_write [--rows 500] [--rounds 8] [--reps 200] [--against OLD/shared/log_segments.py]

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
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
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
    print(f"segment write of {args.rows} batch-1 rows, {args.reps} writes a round, CPU us a write; "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cpus: dict[tuple[str, str], list[float]] = {}
    for number in range(args.rounds):
        line = []
        for model in MODELS:
            order = list(writers.items()) if number % 2 == 0 else list(reversed(writers.items()))
            for name, write in order:
                cpu = _round(write, tables[model], args.reps)
                cpus.setdefault((model, name), []).append(cpu)
                line.append(f"{model} {name} {cpu:.0f}")
        print(f"round {number + 1}: " + ", ".join(line))
    for (model, name), values in cpus.items():
        print(f"{model} {name}: median {statistics.median(values):.0f}, best {min(values):.0f} us a write")
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
