"""What the sandboxed worker hop costs a Python step (issue 12): the same step called in this process, as the
replica did before the split, and through services/engine/sandboxed.py (Arrow IPC frames over pipes to a worker
in its own namespaces), for one row and for 1000 rows of a 29-feature tensor. The rest of the inference path
(gateway, bus, replica) is the same either way. `python -m bench.python_step`."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from services.engine.runtimes import PythonStepRuntime
from services.engine.sandboxed import SandboxedRuntime
from shared.arrow_codec import tensor_array
from shared.settings import Settings

STEP = b"""
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return pd.DataFrame({"score": [float(sum(v)) for v in data["tensor"]]})
"""


def batch(rows: int) -> pa.Table:
    return pa.table({"tensor": tensor_array(np.random.default_rng(0).normal(size=(rows, 29)))})


async def timed(call, table: pa.Table, seconds: float = 3.0) -> list[float]:
    for _ in range(20):
        await call(table)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await call(table)
        samples.append(time.perf_counter() - started)
    return samples


def describe(samples: list[float], rows: int) -> str:
    median = statistics.median(samples)
    p99 = sorted(samples)[int(len(samples) * 0.99) - 1]
    return f"median {median * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms, {rows / median:,.0f} rows/s"


async def measure() -> dict:
    """{"start_ms": ..., rows: (in-process samples, worker samples)} for 1 and 1000 rows."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step.py"
        path.write_bytes(STEP)
        settings = Settings(stack={"data_dir": Path(folder) / "data"})
        local = PythonStepRuntime(path)
        local.load()
        worker = SandboxedRuntime("python", path, Path(folder) / "data" / "work", settings, "bench")
        started = time.perf_counter()
        await worker.start()
        results["start_ms"] = (time.perf_counter() - started) * 1e3

        async def in_process(table: pa.Table) -> pa.Table:
            return local.predict(table)

        try:
            for rows in (1, 1000):
                table = batch(rows)
                before: list[float] = []
                after: list[float] = []
                for _ in range(8):  # alternated, so a busy machine weighs on both alike
                    before += await timed(in_process, table, 0.4)
                    after += await timed(worker.predict_async, table, 0.4)
                results[rows] = (before, after)
        finally:
            await worker.stop()
    return results


def run() -> str:
    """The markdown section of docs/benchmarks.md."""
    results = asyncio.run(measure())
    lines = ["## Python step: in the replica (before) vs in the sandboxed worker (after)\n",
             f"Worker start (sandbox, imports, load): {results['start_ms']:.0f} ms.\n",
             "| rows | in process (before) | sandboxed worker (after) | hop (median) |", "|---|---|---|---|"]
    for rows in (1, 1000):
        before, after = results[rows]
        hop = (statistics.median(after) - statistics.median(before)) * 1e3
        lines.append(f"| {rows} | {describe(before, rows)} | {describe(after, rows)} | +{hop:.3f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
