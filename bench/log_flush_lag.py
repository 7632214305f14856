"""Does building and encoding the engine's log batches in a thread keep the event loop freer than doing it on the
loop (issue 20)? A task counts the loop's stalls (gaps between turns above 0.2 ms) while the real
`LogBatcher._encode` runs every 20 ms, on the loop or through `asyncio.to_thread`, for 40 one-row records (batch-1
traffic) and 8 records of 1,000 rows. `python -m bench.log_flush_lag`."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import uvloop

from services.engine.logbatcher import LogBatcher
from shared.arrow_codec import tensor_array
from shared.logrecords import InferenceRecord
from shared.settings import LogSettings


def _records(count: int, rows: int) -> list[InferenceRecord]:
    inputs = pa.table({"tensor": tensor_array(np.random.default_rng(0).normal(size=(rows, 29)).astype(np.float32))})
    outputs = pa.table({"dense_1": tensor_array(np.zeros((rows, 1), np.float32))})
    return [InferenceRecord(0, inputs, outputs, '{"model_name": "m"}', (1, 2)) for _ in range(count)]


async def measure(in_thread: bool, count: int, rows: int, seconds: float = 4.0) -> tuple[int, float, float]:
    """(stalls above 0.2 ms, their total ms, the longest ms)."""
    batcher = LogBatcher(None, {"name": "d-1", "pipeline": "p", "pipeline_version": "v", "workspace_id": 1},
                         LogSettings(), 8 << 20)
    records = _records(count, rows)
    gaps: list[float] = []
    stop = time.perf_counter() + seconds

    async def encoder() -> None:
        while time.perf_counter() < stop:
            await asyncio.sleep(0.02)
            if in_thread:
                await asyncio.to_thread(batcher._encode, records)
            else:
                batcher._encode(records)

    async def turns() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await asyncio.sleep(0)
            gaps.append(time.perf_counter() - started)

    await asyncio.gather(encoder(), turns())
    stalls = [g for g in gaps if g > 2e-4]
    return len(stalls), sum(stalls) * 1e3, max(gaps) * 1e3


def main() -> None:
    for count, rows in ((40, 1), (8, 1000)):
        for in_thread in (False, True, False, True):  # alternated: the machine's load weighs on both
            stalls, total, longest = uvloop.run(measure(in_thread, count, rows))
            print(f"{count} records x {rows} rows, {'thread' if in_thread else 'loop  '}: {stalls} stalls, "
                  f"{total:.0f} ms in all, longest {longest:.1f} ms")


if __name__ == "__main__":
    main()
