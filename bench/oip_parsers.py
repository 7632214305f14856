"""Other ways to read OIP v2's `data` float list, against the gateway's simdjson reader (docs/performance.md item 35).

    python -m bench.oip_parsers [--rows 1000] [--repeats 30]

For a bench-peers OIP body (`tests.models.sample_rows`, FP32 written as Python floats: ~17 digits a value) prints,
for each reader: the CPU one body costs it (best of --repeats, this process's CPU clock, so a reader that uses
threads counts all of them), the wall time, whether it holds the GIL while it parses (a Python loop's speed in
another thread beside it, against that loop alone: ~1 for a reader that lets go of the GIL on a free second core,
~0.3-0.5 for one that holds it), and which of the invalid JSON number forms of `FORMS` it takes without an error
(the gateway must answer those with its typed 400; a reader that takes them needs a check of its own).
The other readers but pyarrow's JSON reader are handed only the `data` list's bytes (found by `find`, as a change
would have to): their figures leave out the rest of the body's JSON, which another parser would still have to read.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from services.gateway import json_fast, oip
from tests.models import sample_rows

# JSON's grammar refuses each of these as a number in a list (RFC 8259 section 6); `1, 2` is the valid control
FORMS = {"valid control": b"1, 2", "NaN": b"1, NaN", "Infinity": b"1, Infinity", "inf": b"1, inf",
         "+1": b"+1, 2", ".5": b".5, 2", "1.": b"1., 2", "01": b"01, 2", "1e": b"1e, 2", "0x10": b"0x10, 2",
         "true": b"true, 2", "null": b"null, 2", '"1"': b'"1", 2', "1 2 (no comma)": b"1 2", "1,,2": b"1,,2",
         "1,": b"1, 2,"}


def body_of(rows: int) -> bytes:
    values = sample_rows(rows)
    return json.dumps({"inputs": [{"name": "tensor", "shape": list(values.shape), "datatype": "FP32",
                                   "data": values.reshape(-1).tolist()}]}).encode()


def data_span(body: bytes) -> bytes:
    start = body.index(b"[", body.index(b'"data"')) + 1
    return body[start:body.index(b"]", start)]


def _simdjson(body: bytes) -> np.ndarray:
    document = json_fast.parse(body)
    values = np.frombuffer(document["inputs"][0]["data"].as_buffer(of_type="d"), np.float64)
    del document
    return values


def _fromstring(span: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (DeprecationWarning) where it stopped early
        return np.fromstring(span, sep=",", dtype=np.float64)


def _loadtxt(span: bytes) -> np.ndarray:
    return np.loadtxt(io.BytesIO(span.replace(b",", b"\n")), dtype=np.float64, ndmin=1)


def _csv(threads: bool) -> Callable[[bytes], np.ndarray]:
    read = pa_csv.ReadOptions(column_names=["x"], use_threads=threads, block_size=1 << 17 if threads else 1 << 22)
    convert = pa_csv.ConvertOptions(column_types={"x": pa.float64()})

    def read_csv(span: bytes) -> np.ndarray:
        table = pa_csv.read_csv(pa.py_buffer(span.replace(b",", b"\n")), read_options=read, convert_options=convert)
        return table.column(0).to_numpy()

    return read_csv


_SCHEMA = pa.schema([("inputs", pa.list_(pa.struct([("name", pa.string()), ("shape", pa.list_(pa.int64())),
                                                     ("datatype", pa.string()),
                                                     ("data", pa.list_(pa.float64()))])))])


def _arrow_json(body: bytes) -> np.ndarray:
    table = pa_json.read_json(pa.BufferReader(body), read_options=pa_json.ReadOptions(block_size=1 << 22),
                              parse_options=pa_json.ParseOptions(explicit_schema=_SCHEMA))
    return table.column("inputs")[0][0]["data"].values.to_numpy()


def _orjson(span: bytes) -> np.ndarray:
    return np.asarray(orjson.loads(b"[" + span + b"]"), np.float64)


# name -> (reader, fed the whole body or only the `data` list's bytes)
READERS: dict[str, tuple[Callable[[bytes], np.ndarray], bool]] = {
    "simdjson (today: json_fast.parse + as_buffer)": (_simdjson, True),
    "orjson into Python floats (the general path)": (_orjson, False),
    "numpy fromstring(sep=',')": (_fromstring, False),
    "numpy loadtxt (C reader, one value a line)": (_loadtxt, False),
    "pyarrow CSV, one thread (one value a line)": (_csv(False), False),
    "pyarrow CSV, threads (one value a line)": (_csv(True), False),
    "pyarrow JSON reader (whole body, schema given)": (_arrow_json, True),
}


def timed(read: Callable[[bytes], np.ndarray], given: bytes, repeats: int) -> tuple[float, float]:
    """(best CPU, best wall) in microseconds."""
    cpu, wall = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        read(given)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(cpu) * 1e6, min(wall) * 1e6


def _spin(seconds: float) -> int:
    count, until = 0, time.perf_counter() + seconds
    while time.perf_counter() < until:
        count += 1
    return count


def _keep_reading(read: Callable[[bytes], np.ndarray], given: bytes, stop: threading.Event) -> None:
    while not stop.is_set():
        read(given)


def gil_share(read: Callable[[bytes], np.ndarray], given: bytes, seconds: float = 0.4, times: int = 3) -> float:
    """A Python loop's speed while `read` runs in another thread, against the loop alone just before (the median of
    `times` such pairs: other processes take the cores too)."""
    ratios = []
    for _ in range(times):
        alone = _spin(seconds)
        stop = threading.Event()

        worker = threading.Thread(target=_keep_reading, args=(read, given, stop))
        worker.start()
        try:
            beside = _spin(seconds)
        finally:
            stop.set()
            worker.join()
        ratios.append(beside / alone)
    return statistics.median(ratios)


def takes(read: Callable[[bytes], np.ndarray], whole: bool) -> list[str]:
    """The invalid forms of FORMS the reader returns values for."""
    taken = []
    for name, span in FORMS.items():
        given = (b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [' + span + b"]}]}"
                 if whole else span)
        try:
            read(given)
        except Exception:  # noqa: BLE001 - any refusal counts as a refusal
            if name == "valid control":
                taken.append("(refused the valid control)")
            continue
        if name != "valid control":
            taken.append(name)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    body = body_of(args.rows)
    span = data_span(body)
    expected = _simdjson(body)
    readers = {"parse_request today (all of it)": (lambda given: oip.parse_request(given, None), True), **READERS}
    for name, (read, whole) in READERS.items():
        values = read(body if whole else span)
        if values.shape != expected.shape or not np.array_equal(values, expected):
            print(f"{name}: VALUES DIFFER from simdjson's")
    # every reader once a round, round after round, best of the rounds: the VM's speed moves within a minute
    cpu: dict[str, list[float]] = {name: [] for name in readers}
    wall: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.repeats):
        for name, (read, whole) in readers.items():
            one_cpu, one_wall = timed(read, body if whole else span, 1)
            cpu[name].append(one_cpu)
            wall[name].append(one_wall)
    today = min(cpu["simdjson (today: json_fast.parse + as_buffer)"])
    print(f"{args.rows} rows x 29 FP32 values, body {len(body):,} bytes, best of {args.repeats} rounds "
          f"(load {os.getloadavg()[0]:.1f})\n")
    print(f"{'reader':48s} {'CPU us':>8s} {'wall us':>8s} {'x today':>8s} {'loop beside':>11s}  invalid forms taken")
    for name, (read, whole) in readers.items():
        given = body if whole else span
        taken = "" if name not in READERS else ", ".join(takes(read, whole)) or "-"
        print(f"{name:48s} {min(cpu[name]):8,.0f} {min(wall[name]):8,.0f} {min(cpu[name]) / today:8.1f} "
              f"{gil_share(read, given):11.2f}  {taken}", flush=True)


if __name__ == "__main__":
    main()
