"""What the engine's log table costs its event loop: `build_batch` of one flush's records, as the replica builds it
every `engine_segment_ms` (docs/performance.md items 77 and 79), in one process, no stack.

    python -m bench.log_build [--records 600] [--rows 1] [--rounds 6] [--reps 300] [--kind lane|tables]
                              [--against OLD/shared/logrecords.py]

`--kind lane` (the default): records of the fast lane (`ArrayRecord`, ccfraud-like: 29 float32 inputs a row, a
(rows, 1) float32 output, each request's arrays its own), `tables`: ordinary records (`InferenceRecord` of tables,
the general path's). `--against FILE` loads another `logrecords.py` (e.g. `git show <rev>:shared/logrecords.py >
<scratch dir>/old_logrecords.py`) beside this tree's and alternates the two round by round on records each made with its
own classes, checking their tables are equal; each round's figures are the median wall time of `--reps` builds and
this thread's CPU time a build (which the machine's other load does not count), in us.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from types import ModuleType

import numpy as np
import pyarrow as pa

from shared import logrecords
from shared.arrow_codec import tensor_array

FEATURES = 29


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("logrecords_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _records(module: ModuleType, kind: str, count: int, rows: int) -> list:
    rng = np.random.default_rng(5)
    out_type = tensor_array(np.zeros((1, 1), np.float32)).type
    layout = module.RecordLayout(pa.schema([("tensor", pa.list_(pa.float32(), FEATURES))]), (FEATURES,),
                                 pa.schema([("dense_1", out_type)]))
    made = []
    for i in range(count):
        # a request's values are a view of its message (np.frombuffer), its output the model's own array
        flat = np.frombuffer(rng.random(rows * FEATURES, np.float32).tobytes(), np.float32)
        out = rng.random((rows, 1), np.float32)
        record = module.ArrayRecord(1_700_000_000_000 + i, layout, [flat], [out], rows, "ccfraud", (41_000 + i, 52_000))
        if kind == "tables":
            record = module.InferenceRecord(record.at_ms, record.inputs, record.outputs, record.last_model,
                                            record.elapsed)
        made.append(record)
    return made


def _round(module: ModuleType, records: list, reps: int) -> tuple[float, float]:
    """The median wall time of a build and this thread's CPU a build (what other processes' load leaves out), us."""
    samples = []
    build = module.build_batch
    cpu = time.thread_time_ns()
    for _ in range(reps):
        start = time.perf_counter_ns()
        build(records, "6d1a7f2c-6a4e-4bd0-9f84-0d6f2b0c9a11")
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000, (time.thread_time_ns() - cpu) / reps / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--kind", choices=("lane", "tables"), default="lane")
    parser.add_argument("--against", help="another logrecords.py to alternate with this tree's")
    args = parser.parse_args()
    modules = {"this tree": logrecords}
    if args.against:
        modules = {"against": _load(args.against), "this tree": logrecords}
    records = {name: _records(module, args.kind, args.records, args.rows) for name, module in modules.items()}
    tables = [module.build_batch(records[name], "v") for name, module in modules.items()]
    if len(tables) == 2:
        assert tables[0].equals(tables[1]) and tables[0].schema.equals(tables[1].schema, check_metadata=True)
    gc.collect()
    gc.freeze()
    print(f"build_batch of {args.records} {args.kind} records x {args.rows} row(s), median of {args.reps} a round, "
          f"us; load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    figures: dict[str, list[float]] = {name: [] for name in modules}
    cpus: dict[str, list[float]] = {name: [] for name in modules}
    for number in range(args.rounds):
        line = []
        for name, module in (modules.items() if number % 2 == 0 else reversed(modules.items())):
            wall, cpu = _round(module, records[name], args.reps)
            figures[name].append(wall)
            cpus[name].append(cpu)
            line.append(f"{name} {wall:.1f} (CPU {cpu:.1f})")
        print(f"round {number + 1}: " + ", ".join(line))
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.1f}, best {min(values):.1f} us; CPU a build median "
              f"{statistics.median(cpus[name]):.1f}, best {min(cpus[name]):.1f} us")
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
