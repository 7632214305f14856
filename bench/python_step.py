"""What the sandboxed worker hop costs a Python step (issue 12): the same step called in this process, as the
replica did before the split, and through services/engine/sandboxed.py (Arrow IPC frames over pipes to a worker
in its own namespaces), for one row and for 1000 rows of a 29-feature tensor. The rest of the inference path
(gateway, bus, replica) is the same either way. Beside the latencies: the CPU time a request costs the worker
process and this process (the replica's side of the hop), which hardly depend on what else the machine runs.
`python -m bench.python_step`."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.peers.harness import cmdline, descendants
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


def process_cpu(pid: int | None) -> float:
    """utime + stime of a process (s); this process's own when pid is None."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(call, table: pa.Table, seconds: float = 3.0, cpu: dict | None = None,
                worker: int | None = None) -> list[float]:
    """Latencies of `call(table)` for `seconds`; `cpu` adds up the CPU seconds of this process ("caller") and of
    the `worker` pid, and the calls ("n")."""
    for _ in range(20):
        await call(table)
    samples: list[float] = []
    before = (process_cpu(None), process_cpu(worker) if worker else 0.0)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await call(table)
        samples.append(time.perf_counter() - started)
    if cpu is not None:
        cpu["caller"] = cpu.get("caller", 0.0) + process_cpu(None) - before[0]
        cpu["worker"] = cpu.get("worker", 0.0) + (process_cpu(worker) - before[1] if worker else 0.0)
        cpu["n"] = cpu.get("n", 0) + len(samples)
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
        pid = next(p for p in descendants(worker.process.pid) if "services.engine.worker" in cmdline(p))

        async def in_process(table: pa.Table) -> pa.Table:
            return local.predict(table)

        try:
            for rows in (1, 1000):
                table = batch(rows)
                before: list[float] = []
                after: list[float] = []
                cpu_before: dict = {}
                cpu_after: dict = {}
                for _ in range(8):  # alternated, so a busy machine weighs on both alike
                    before += await timed(in_process, table, 0.4, cpu_before)
                    after += await timed(worker.predict_async, table, 0.4, cpu_after, pid)
                results[rows] = (before, after)
                results[f"cpu{rows}"] = (cpu_before["caller"] / cpu_before["n"] * 1e6,
                                         cpu_after["caller"] / cpu_after["n"] * 1e6,
                                         cpu_after["worker"] / cpu_after["n"] * 1e6)
        finally:
            await worker.stop()
    return results


def run() -> str:
    """The markdown section of docs/benchmarks.md."""
    results = asyncio.run(measure())
    lines = ["## Python step: in the replica (before) vs in the sandboxed worker (after)\n",
             f"Worker start (sandbox, imports, load): {results['start_ms']:.0f} ms.\n",
             "| rows | in process (before) | sandboxed worker (after) | hop (median) | CPU a request: in process; "
             "replica side + worker |", "|---|---|---|---|---|"]
    for rows in (1, 1000):
        before, after = results[rows]
        hop = (statistics.median(after) - statistics.median(before)) * 1e3
        inside, caller, worker = results[f"cpu{rows}"]
        lines.append(f"| {rows} | {describe(before, rows)} | {describe(after, rows)} | +{hop:.3f} ms | "
                     f"{inside:,.0f} us; {caller:,.0f} + {worker:,.0f} us |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(run())


if __name__ == "__main__":
    main()
