"""Railyard against MLServer 1.7 (`parallel_workers=0` and the default), `mlflow models serve` and raw
onnxruntime, in one run (issue 20).

Each system serves two models from the same bytes: the tiny ccfraud regressor (`tests.models.ccfraud_onnx()`:
what a request costs around the model) and a seed-like MLP (`bench/peers/models.py`). One system is up at a
time; the systems run in one order, then in the opposite one (Railyard's forms and models too: railyard_plan), and
every ratio is taken within a round. For each system, model and format: batch-1 p50/p99 on one connection, batch-1
req/s on 8 and 32 connections, batch-1000 rows/s on 4 connections. Every answer format is checked once against
onnxruntime's own output before it is timed; a Railyard figure then waits until its stack has stored every row it
was sent (wait_for_log_path, bench/peers/logpath.py), and every figure for the sync and the idle machine (measure).
Railyard is measured with tokens checked and every row logged (the default log policy), in three formats:
pandas-records JSON, Arrow and OIP v2 JSON; MLServer in OIP v2 JSON; mlflow in its `dataframe_records` JSON.
Also: RSS of an ONNX replica and of MLServer's processes, the idle embedded stack's RSS, a Python-step
pipeline (sandboxed worker) against the ONNX one, and the engine options (adaptive batching on, off, with a
delay; each log policy) on the ccfraud model, one deployment after another (round 1).

Environment: `BENCH_QUICK=1` (short loops, for development), `BENCH_SYSTEMS=railyard,raw,...` (a subset;
names below), `BENCH_MODELS=ccfraud` (a subset of the models, for every system), `BENCH_RAILYARD_FORMS=records,Arrow`
(a subset of Railyard's forms, in the harness's order), `BENCH_NO_EXTRAS=1` (no memory readings, Python step or
engine options in round 1: the figures alone), `BENCH_RAILYARD_VARIANTS=name:{json engine_config};...` (more
Railyard deployments of the same models side by side, e.g. `nobatch:{"batch_max_delay_ms":-1}`), `BENCH_NO_DOCS=1`
(print only, leave docs/benchmarks.md alone), `BENCH_NO_SYNC=1` (no sync before each figure: docs/performance.md
item 93), `BENCH_NO_LOG_WAIT=1` (no wait for Railyard's log path before each figure) and `BENCH_FIXED_ORDER=1`
(Railyard's forms in the same order in both rounds): the last two are the harness before session 39 (item 102), for
an A/B.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import uvloop

from bench import loadgen
from bench.peers import logpath
from bench.peers.models import seed_mlp_onnx
from shared.arrow_codec import tensor_array, to_ipc_file
from tests.models import ccfraud_onnx, sample_rows
from tests.stack import free_ports, stack_env, start_stack

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCS = REPO / "docs" / "benchmarks.md"
MLSERVER_BIN = Path(os.environ.get("BENCH_MLSERVER", REPO / ".venv-bench-mlserver" / "bin" / "mlserver"))
MLFLOW_BIN = Path(os.environ.get("BENCH_MLFLOW", REPO / ".venv-bench-mlflow" / "bin" / "mlflow"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
SINGLES = 300 if QUICK else 2000
WARM = 50 if QUICK else 200
CONCURRENT_S = 1.5 if QUICK else 4.0
BATCH_S = 1.5 if QUICK else 4.0
MODELS = {"ccfraud": ccfraud_onnx, "seed-mlp": seed_mlp_onnx}
RECORDS = "application/json; format=pandas-records"
ARROW = "application/vnd.apache.arrow.file"
START_MARK = "<!-- bench-peers:start -->"
END_MARK = "<!-- bench-peers:end -->"
MEASURES = ("p50_ms", "p99_ms", "rps8", "rps32", "rows1000")
# Before a target's batch-1 figures: the machine's busy CPU under SETTLE_CORES over SETTLE_WINDOW s, waited for up to
# SETTLE_MAX s. Railyard's log path is still storing the previous form's batch-1000 rows for a few seconds after
# that load ends (docs/performance.md item 48: a form measured then had its p50 at 1.5-2.3 ms against ~1.0 quiet);
# every system waits alike, and the wait is reported (`settle_s`).
SETTLE_CORES = 0.25
SETTLE_WINDOW = 1.0
SETTLE_MAX = 30.0
SYNC = os.environ.get("BENCH_NO_SYNC") != "1"  # write_back before each measure (BENCH_NO_SYNC=1: not, for an A/B)
# Before a Railyard figure, after its answers are checked: its stack has stored every inference row sent so far (the
# replicas hold none, the log store has acknowledged every message of INFERENCE_LOGS; bench/peers/logpath.py), read
# every LOG_POLL s for up to LOG_WAIT_MAX s; the wait is printed and reported (`log_wait_s`). Then the sync and the
# settle as for every system.
LOG_WAIT = os.environ.get("BENCH_NO_LOG_WAIT") != "1"
LOG_WAIT_MAX = 60.0
LOG_POLL = 0.2
ALTERNATE = os.environ.get("BENCH_FIXED_ORDER") != "1"  # Railyard's forms and models reversed in round 2
FORMS = ("records", "Arrow", "OIP v2")


def _subset(variable: str, names: tuple[str, ...]) -> list[str]:
    """The names an environment variable lists (comma-separated), in `names`' order; all of them when unset."""
    wanted = [name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise SystemExit(f"{variable}: {', '.join(unknown)} not among {', '.join(names)}")
    return [name for name in names if name in wanted] if wanted else list(names)


MEASURED = _subset("BENCH_MODELS", tuple(MODELS))  # the models measured, for every system
RAILYARD_FORMS = _subset("BENCH_RAILYARD_FORMS", FORMS)
EXTRAS = os.environ.get("BENCH_NO_EXTRAS") != "1"  # round 1's memory readings, Python step and engine options


@dataclass
class Target:
    """One (system, model, format): the two requests to send and how to read a prediction from an answer."""

    url: str
    one: bytes
    thousand: bytes
    first: Callable[[bytes], float]  # the answer's first prediction
    count: Callable[[bytes], int]  # how many predictions the answer holds
    # Railyard's: (rows its replicas hold for the log, messages its log store has not acknowledged); peers log nothing
    backlog: Callable[[], tuple[int | None, int | None]] | None = None


@dataclass
class Results:
    """Figures by round -> system label -> model -> measure, and the memory and pipeline notes."""

    rounds: list[dict[str, dict[str, dict[str, float]]]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    pipeline: list[dict[str, float]] = field(default_factory=list)
    options: dict[str, dict[str, float]] = field(default_factory=dict)
    load: list[str] = field(default_factory=list)
    machine: str = ""


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_state() -> str:
    """How long the machine has been up and its free memory: on a VM whose host backs guest memory on first touch
    (Firecracker with free page reporting, as this one), a fresh VM's growing page cache costs SeaweedFS ~2-3 ms
    of CPU per logged MB that a warm one does not (docs/performance.md item 34), so the two are not equals."""
    up = float(Path("/proc/uptime").read_text().split()[0])
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    free = int(meminfo.get("MemFree", "0 kB").split()[0]) // 1024
    return f"up {up / 60:.0f} min, MemFree {free:,} MiB"


def expected(model: str) -> tuple[float, np.ndarray]:
    session = ort.InferenceSession(MODELS[model]())
    return float(session.run(None, {"tensor": sample_rows(1)})[0][0, 0]), sample_rows(1000)


# --- load -----------------------------------------------------------------------------------------------


async def _one(url: str, request: bytes) -> bytes:
    connection = await loadgen.Connection(url).open()
    try:
        status, body = await connection.send(request)
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}: {body[:300]!r}")
    return body


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat's first line (iowait counts as idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def _steal_jiffies() -> tuple[int, int]:
    """(stolen, total) clock ticks of every CPU since boot, from /proc/stat's first line: the host's steal is time the
    VM's vCPUs were ready to run and the host ran something else."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time the host stole between two `_steal_jiffies` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


async def settle() -> float:
    """Wait until the machine's CPU is idle (below SETTLE_CORES cores over SETTLE_WINDOW s) or SETTLE_MAX has
    passed; the seconds waited."""
    import asyncio

    cores = len(os.sched_getaffinity(0))
    started = time.monotonic()
    before = _busy_jiffies()
    while True:
        await asyncio.sleep(SETTLE_WINDOW)
        after = _busy_jiffies()
        busy, total = after[0] - before[0], after[1] - before[1]
        if total and busy / total * cores < SETTLE_CORES or time.monotonic() - started >= SETTLE_MAX:
            return time.monotonic() - started
        before = after


def write_back() -> float:
    """Write the machine's dirty page cache to disk now (sync); the seconds it took. What an earlier form's load
    wrote (Railyard's logged rows: ~250 MiB a batch-1000 window) stays dirty in memory until the kernel's flusher
    writes it back `vm.dirty_expire_centisecs` (30 s) later, in one burst of up to ~800 MiB; at ~17 s a form and
    model that burst fell into the next form's batch-1000 window, where SeaweedFS's PUTs waited behind it and the
    engine sent a flush through the stream (docs/performance.md item 93). Synced before every system's figures alike
    (a peer that wrote nothing syncs nothing); the window's own writes are as before."""
    started = time.monotonic()
    os.sync()
    return time.monotonic() - started


async def measure(target: Target, model: str) -> dict[str, float]:
    """Check the answers, then time them (see the module docstring)."""
    want, _ = expected(model)
    got = target.first(await _one(target.url, target.one))
    if abs(got - want) > 1e-4:
        raise RuntimeError(f"{target.url}: predicted {got}, onnxruntime says {want}")
    answer = await _one(target.url, target.thousand)
    if target.count(answer) != 1000:
        raise RuntimeError(f"{target.url}: {target.count(answer)} predictions for 1000 rows")
    logged = wait_for_log_path(target) if LOG_WAIT and target.backlog is not None else None
    synced = write_back() if SYNC else 0.0
    settled = await settle()
    stolen = _steal_jiffies()
    await loadgen.sequential(target.url, target.one, WARM)
    singles = await loadgen.sequential(target.url, target.one, SINGLES)
    figures = {"p50_ms": statistics.median(singles) * 1e3,
               "p99_ms": statistics.quantiles(singles, n=100)[98] * 1e3,
               "rps8": await loadgen.concurrent(target.url, target.one, 8, CONCURRENT_S),
               "rps32": await loadgen.concurrent(target.url, target.one, 32, CONCURRENT_S)}
    await loadgen.sequential(target.url, target.thousand, 3)
    own, started = _own_cpu(), time.perf_counter()
    rate = await loadgen.concurrent(target.url, target.thousand, 4, BATCH_S)
    figures["rows1000"] = 1000 * rate
    # the load generator's CPU a batch-1000 request: the same work in every round of a system, so a round where it
    # is higher ran on a slower machine (docs/performance.md item 93: Railyard's rows/s moved inversely with it)
    figures["loadgen_us"] = (_own_cpu() - own) / max(rate * (time.perf_counter() - started), 1) * 1e6
    figures["settle_s"] = settled
    figures["sync_s"] = synced
    # the host's steal over the figures: session 39 (item 102) saw a round's Arrow forms stall at 25-36 % stolen
    figures["steal"] = steal_share(stolen, _steal_jiffies())
    if logged is not None:
        figures["log_wait_s"] = logged
    return figures


def wait_for_log_path(target: Target) -> float:
    """Wait until the target's stack has stored every inference row sent so far (at most LOG_WAIT_MAX s); the seconds
    waited, printed with what was still on the path when the wait began (or at its end, if it did not empty)."""
    assert target.backlog is not None
    first: list[tuple[int | None, int | None]] = []

    def stored() -> bool:
        now = target.backlog()
        if not first:
            first.append(now)
        return logpath.idle(*now)

    waited, emptied = logpath.wait_until(stored, LOG_WAIT_MAX, LOG_POLL)
    rows, messages = first[0] if first else (None, None)
    if emptied:
        print(f"    log path: waited {waited:.1f} s for it to store everything (at first: {rows} rows held by "
              f"the replicas, {messages} messages not yet acknowledged by the log store)", flush=True)
    else:
        rows, messages = _backlog_or_none(target)
        print(f"    log path: NOT idle after {waited:.1f} s ({rows} rows held by the replicas, {messages} messages "
              "not acknowledged by the log store); measured anyway", flush=True)
    return waited


def _backlog_or_none(target: Target) -> tuple[int | None, int | None]:
    try:
        return target.backlog()
    except Exception:  # noqa: BLE001 - only said
        return None, None


def _own_cpu() -> float:
    """This process's CPU seconds so far (it is the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_onnxruntime(model: str) -> dict[str, float]:
    """The model alone, in this process, one intra-op thread (as a replica with cpus=1 and the MLServer runtime)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(MODELS[model](), options, providers=["CPUExecutionProvider"])
    one, thousand = sample_rows(1), sample_rows(1000)
    for _ in range(200):
        session.run(None, {"tensor": one})
    singles = []
    for _ in range(SINGLES):
        started = time.perf_counter()
        session.run(None, {"tensor": one})
        singles.append(time.perf_counter() - started)
    started = time.perf_counter()
    count = 0
    while time.perf_counter() - started < 1.0:
        session.run(None, {"tensor": thousand})
        count += 1
    p50 = statistics.median(singles)
    return {"p50_ms": p50 * 1e3, "p99_ms": statistics.quantiles(singles, n=100)[98] * 1e3, "rps8": 1 / p50,
            "rps32": 1 / p50, "rows1000": 1000 * count / (time.perf_counter() - started)}


# --- answers ----------------------------------------------------------------------------------------------


def oip_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "tensor", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.reshape(-1).tolist()}]}).encode()


def oip_first(body: bytes) -> float:
    return float(json.loads(body)["outputs"][0]["data"][0])


def oip_count(body: bytes) -> int:
    return int(json.loads(body)["outputs"][0]["shape"][0])


def _mlflow_predictions(body: bytes) -> list:
    predictions = json.loads(body)["predictions"]
    if isinstance(predictions, dict):  # {"dense_1": [[p], ...]}
        predictions = next(iter(predictions.values()))
    if predictions and isinstance(predictions[0], dict):  # [{"dense_1": [p]}, ...]
        predictions = [next(iter(p.values())) for p in predictions]
    return predictions


def mlflow_first(body: bytes) -> float:
    value = _mlflow_predictions(body)[0]
    return float(value[0] if isinstance(value, list) else value)


def records_first(body: bytes) -> float:
    return float(json.loads(body)[0]["out"]["dense_1"][0])


def arrow_first(body: bytes) -> float:
    return float(pa.ipc.open_file(pa.py_buffer(body)).read_all().column("out.dense_1")[0][0].as_py())


def arrow_count(body: bytes) -> int:
    return pa.ipc.open_file(pa.py_buffer(body)).read_all().num_rows


# --- processes ----------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += tree.get(current, [])
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def rollup_mib(pids: list[int], field: str) -> float:
    """A field of /proc/<pid>/smaps_rollup summed (Pss: shared pages split between their users; Anonymous: the
    processes' own memory, no code or mapped files)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
    return total / 1024


def memory(pids: list[int]) -> tuple[float, float, float]:
    """(RSS, PSS, anonymous) MiB of these processes."""
    return rss_mib(pids), rollup_mib(pids, "Pss"), rollup_mib(pids, "Anonymous")


def _mib(figures: tuple[float, float, float]) -> str:
    return f"{figures[0]:,.0f} MiB RSS (PSS {figures[1]:,.0f}, anonymous {figures[2]:,.0f})"


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def wait_http(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(args: list[str], log: Path, ready: str, timeout: float = 120.0, **kwargs) -> Iterator[subprocess.Popen]:
    """A peer server in its own process group, stopped (the whole group) on the way out."""
    with open(log, "ab") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, **kwargs)
    try:
        wait_http(ready, timeout, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --- systems --------------------------------------------------------------------------------------------------


def mlserver(folder: Path, workers: int | None) -> Iterator[tuple[str, dict[str, Target], float]]:
    """MLServer serving both models with the onnxruntime runtime of mlserver_runtime.py; yields (label,
    targets by model, RSS of its processes in MiB)."""
    root = folder / f"mlserver-{workers}"
    http, grpc, metrics = free_ports(3)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "mlserver_runtime.py", root / "mlserver_runtime.py")
    settings = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1"}
    if workers is not None:
        settings["parallel_workers"] = workers
    (root / "settings.json").write_text(json.dumps(settings))
    for model, make in MODELS.items():
        (root / model).mkdir(exist_ok=True)
        (root / model / "model.onnx").write_bytes(make())
        (root / model / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_runtime.OnnxModel", "parameters": {"uri": "./model.onnx"}}))
    base = f"http://127.0.0.1:{http}"
    label = "MLServer pw=0" if workers == 0 else "MLServer default"
    with running([str(MLSERVER_BIN), "start", str(root)], folder / f"{label}.log".replace(" ", "_"),
                 f"{base}/v2/models/seed-mlp/ready", cwd=root) as process:
        headers = {"Content-Type": "application/json"}
        targets = {}
        for model in MEASURED:
            url = f"{base}/v2/models/{model}/infer"
            targets[model] = Target(url, loadgen.build_request(url, oip_body(sample_rows(1)), headers),
                                    loadgen.build_request(url, oip_body(sample_rows(1000)), headers),
                                    oip_first, oip_count)
        yield label, targets, lambda: memory(descendants(process.pid))


def mlflow_serve(folder: Path) -> Iterator[tuple[str, dict[str, Target], float]]:
    """`mlflow models serve --env-manager local`, one server per model (it serves one), one after another."""
    python = MLFLOW_BIN.parent / "python"
    for model in MEASURED:
        source, saved = folder / f"{model}.onnx", folder / f"mlflow-{model}"
        source.write_bytes(MODELS[model]())
        if not saved.exists():
            subprocess.run([str(python), str(HERE / "mlflow_model.py"), str(source), str(saved)], check=True,
                           capture_output=True, timeout=300)
        port = free_ports(1)[0]
        base = f"http://127.0.0.1:{port}"
        # as in its activated venv: the command execs `uvicorn` from PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"file://{folder}/mlruns",
               "PATH": f"{MLFLOW_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with running([str(MLFLOW_BIN), "models", "serve", "-m", str(saved), "--env-manager", "local", "-h",
                      "127.0.0.1", "-p", str(port), "-w", "1"], folder / f"mlflow-{model}.log", f"{base}/ping",
                     env=env) as process:
            url = f"{base}/invocations"
            headers = {"Content-Type": "application/json"}

            def records(rows: np.ndarray) -> bytes:
                return json.dumps({"dataframe_records": [{f"f{i}": float(v) for i, v in enumerate(row)}
                                                         for row in rows.tolist()]}).encode()

            target = Target(url, loadgen.build_request(url, records(sample_rows(1)), headers),
                            loadgen.build_request(url, records(sample_rows(1000)), headers), mlflow_first,
                            lambda body: len(_mlflow_predictions(body)))
            yield "mlflow serve", {model: target}, lambda process=process: memory(descendants(process.pid))


PYTHON_STEP = b"""
import numpy as np
import pandas as pd

WEIGHTS = np.random.default_rng(29).normal(size=29).astype(np.float32)

def wallaroo_json(data: pd.DataFrame):
    x = np.stack(data["tensor"].to_numpy()).astype(np.float32)
    return pd.DataFrame({"dense_1": [[float(v)] for v in 1 / (1 + np.exp(-(x @ WEIGHTS)))]})
"""


class RailyardDeployer:
    """Uploads models and deploys pipelines on a running stack, as a user would (the admin's token)."""

    def __init__(self, stack) -> None:
        from shared.client import RailyardAPIError, RailyardClient

        secrets = stack.secrets()
        self.client = client = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
        deadline = time.monotonic() + 60
        while True:  # healthy, but on a loaded machine auth may not answer the gateway yet: 503, retried a while
            try:
                client.login(secrets["admin_username"], secrets["admin_password"])
                break
            except RailyardAPIError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.workspace = client.post("workspaces/create", {"workspace_name": "peers"})["workspace_id"]
        self.versions: dict[str, str] = {}
        self.deployments: list[str] = []  # every deployment made here (`<deploy_id>-<id>`), for the log path's wait
        self.monitor = f"http://127.0.0.1:{stack.env['RAILYARD_STACK__NATS_MONITOR_PORT']}"  # nats-server's /jsz

    def upload(self, name: str, content: bytes, framework: str = "onnx") -> None:
        client = self.client
        upload = client.http.post("/v1/api/models/upload_stream", files={"file": (name, content)},
                                  data={"name": name, "workspace_id": self.workspace, "framework": framework},
                                  headers=client.auth_header())
        if upload.status_code != 200:
            raise RuntimeError(f"uploading {name}: HTTP {upload.status_code} {upload.text}")
        model_id = upload.json()["insert_models"]["returning"][0]["models"][0]["id"]
        self.versions[name] = client.post("models/list_versions", {"models_pk_id": model_id})[0]["model_version"]

    def deploy(self, pipeline: str, models: list[str], engine_config: dict | None = None) -> str:
        """The deployment's inference URL (records/Arrow); OIP is /v2/models/<deployment>/infer."""
        client = self.client
        steps = [{"ModelInference": {"models": [{"name": m, "version": self.versions[m]}]}} for m in models]
        created = client.post("pipelines/create", {"pipeline_id": pipeline, "workspace_id": self.workspace,
                                                   "definition": {"steps": steps}})
        client.post("pipelines/deploy", {"deploy_id": pipeline, "pipeline_id": created["pipeline_pk_id"],
                                         "pipeline_version_pk_id": created["pipeline_variant_pk_id"],
                                         "engine_config": engine_config or {}})
        url = client.post("admin/get_pipeline_external_url", {"workspace_id": self.workspace,
                                                               "pipeline_name": pipeline})["url"]
        self.deployments.append(url.split("/infer/")[1].split("/")[0])
        return url

    def log_backlog(self) -> tuple[int | None, int | None]:
        """What the stack's log path still holds: rows in its replicas (every deployment made here) and messages of
        INFERENCE_LOGS its log store has not acknowledged (bench/peers/logpath.py)."""
        statuses = [self.client.post("status/get_deployment", {"name": name}) for name in self.deployments]
        with urllib.request.urlopen(f"{self.monitor}/jsz?accounts=true&streams=true&consumers=true",
                                    timeout=5) as response:
            jsz = json.loads(response.read())
        return logpath.backlog(statuses, jsz)

    def targets(self, url: str) -> dict[str, Target]:
        auth = {"Authorization": f"Bearer {self.client.token}"}
        deployment = url.split("/infer/")[1].split("/")[0]
        oip = url.split("/v1/api/")[0] + f"/v2/models/{deployment}/infer"

        def records(rows: np.ndarray) -> bytes:
            return json.dumps([{"tensor": row} for row in rows.tolist()]).encode()

        def arrow(rows: np.ndarray) -> bytes:
            return to_ipc_file(pa.table({"tensor": tensor_array(rows)}))

        one, thousand = sample_rows(1), sample_rows(1000)
        return {
            "records": Target(url, loadgen.build_request(url, records(one), auth | {"Content-Type": RECORDS}),
                              loadgen.build_request(url, records(thousand), auth | {"Content-Type": RECORDS}),
                              records_first, lambda body: len(json.loads(body)), self.log_backlog),
            "Arrow": Target(url, *(loadgen.build_request(url, arrow(rows), auth | {"Content-Type": ARROW,
                                                                                   "Accept": ARROW})
                                   for rows in (one, thousand)), arrow_first, arrow_count, self.log_backlog),
            "OIP v2": Target(oip, *(loadgen.build_request(oip, oip_body(rows), auth | {
                "Content-Type": "application/json"}) for rows in (one, thousand)), oip_first, oip_count,
                self.log_backlog),
        }


@contextlib.contextmanager
def ccfraud_stack(prefix: str, settings: list[str]) -> Iterator[tuple[Any, RailyardDeployer]]:
    """A fresh embedded stack (with `RAILYARD_...=value` settings) and a deployer that has uploaded ccfraud; the
    stack and its folder go when the block ends (bench/cpu_account.py, bench/tail.py)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    stack = start_stack(folder / "data", stack_env(folder / "data") | dict(item.split("=", 1) for item in settings))
    try:
        stack.wait_healthy(180)
        deployer = RailyardDeployer(stack)
        deployer.upload("ccfraud", ccfraud_onnx())
        yield stack, deployer
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


def railyard_plan(variants: list[str], forms: list[str], models: list[str], round_index: int
                  ) -> list[tuple[tuple[str, str], list[str]]]:
    """Railyard's measurements in a round, in order: ((variant, form), its models in order), one entry a yield of
    `railyard`. Round 1 (index 0) takes each variant's forms in `forms`' order and each form's models in `models`'
    order; round 2 the whole sequence reversed (logpath.round_order; not with BENCH_FIXED_ORDER=1), as the systems'
    order is, so a form no longer follows the same form's batch-1000 load in both rounds."""
    flat = [(variant, form, model) for variant in variants for form in forms for model in models]
    return [(key, [model for _, _, model in group])
            for key, group in itertools.groupby(logpath.round_order(flat, round_index, ALTERNATE),
                                                key=lambda item: item[:2])]


def railyard(folder: Path, variants: dict[str, dict], round_index: int, results: Results,
             label: str = "Railyard") -> Iterator[tuple[str, dict[str, Target], Callable[[], float] | None]]:
    """A fresh embedded stack; every variant deploys each model measured (a variant when its first form comes).
    Yields one label per (variant, format), in railyard_plan's order."""
    first_round = round_index == 0
    data = Path(tempfile.mkdtemp(prefix="railyard-peers-", dir=folder)) / "data"
    stack = start_stack(data, stack_env(data))
    try:
        stack.wait_healthy(180)
        if first_round and EXTRAS:
            time.sleep(3)  # the services settle (first imports done) before the idle figure
            results.memory["stack_idle"] = memory(descendants(stack.process.pid))
        deployer = RailyardDeployer(stack)
        for model in MEASURED:
            deployer.upload(model, MODELS[model]())
        plan = railyard_plan(list(variants), RAILYARD_FORMS, MEASURED, round_index)
        targets: dict[str, dict[str, dict[str, Target]]] = {}
        for index, ((variant, form), models) in enumerate(plan):
            if variant not in targets:
                targets[variant] = {model: deployer.targets(deployer.deploy(f"{variant}-{model}", [model],
                                                                            variants[variant]))
                                    for model in MEASURED}
            name = label if variant == "default" else f"{label} {variant}"
            yield f"{name} {form}", {m: targets[variant][m][form] for m in models}, None
            variant_done = index + 1 == len(plan) or plan[index + 1][0][0] != variant
            if variant == "default" and first_round and EXTRAS and variant_done:
                replicas = [p for p in descendants(stack.process.pid) if "services.engine.replica" in cmdline(p)]
                results.memory["replicas"] = sorted(memory([p]) for p in replicas)
                time.sleep(5)  # the replicas hand freed heap back once their log buffer is empty (replica.py)
                results.memory["replicas_idle"] = sorted(memory([p]) for p in replicas)
        if first_round and EXTRAS:
            results.pipeline.append(uvloop.run(python_step_pipeline(deployer)))
            results.options = uvloop.run(engine_options(deployer))
    finally:
        stack.stop()
        shutil.rmtree(data.parent, ignore_errors=True)


OPTIONS = {"default (batching, every row logged)": {}, "batching off": {"batch_max_delay_ms": -1},
           "batching, 1 ms delay": {"batch_max_delay_ms": 1}, "log policy sampled 0.1": {
               "log_policy": {"mode": "sampled", "fraction": 0.1}},
           "log policy outputs": {"log_policy": "outputs"}, "log policy off": {"log_policy": "off"}}


async def engine_options(deployer: RailyardDeployer) -> dict[str, dict[str, float]]:
    """The ccfraud model under each engine option (adaptive batching, log policies), one after another."""
    figures = {}
    for index, (label, config) in enumerate(OPTIONS.items()):
        targets = deployer.targets(deployer.deploy(f"option-{index}", ["ccfraud"], config))
        records, arrow = targets["records"], targets["Arrow"]
        await loadgen.sequential(records.url, records.one, WARM)
        singles = await loadgen.sequential(records.url, records.one, SINGLES // 2)
        figures[label] = {"p50_ms": statistics.median(singles) * 1e3,
                          "rps32": await loadgen.concurrent(records.url, records.one, 32, CONCURRENT_S)}
        await loadgen.sequential(arrow.url, arrow.thousand, 3)
        figures[label]["arrow1000"] = 1000 * await loadgen.concurrent(arrow.url, arrow.thousand, 4, BATCH_S)
        figures[label]["records1000"] = 1000 * await loadgen.concurrent(records.url, records.thousand, 4, BATCH_S)
    return figures


async def python_step_pipeline(deployer: RailyardDeployer) -> dict[str, float]:
    """A Python step (sandboxed worker) against the ccfraud ONNX model, both alone in a pipeline, records JSON."""
    deployer.upload("pystep", PYTHON_STEP, "python")
    figures = {}
    for name, models in (("onnx", ["ccfraud"]), ("python", ["pystep"])):
        target = deployer.targets(deployer.deploy(f"step-{name}", models))["records"]
        await loadgen.sequential(target.url, target.one, WARM)
        singles = await loadgen.sequential(target.url, target.one, SINGLES // 2)
        figures[f"{name}_p50_ms"] = statistics.median(singles) * 1e3
        await loadgen.sequential(target.url, target.thousand, 3)
        figures[f"{name}_rows1000"] = 1000 * await loadgen.concurrent(target.url, target.thousand, 4, BATCH_S)
    return figures


# --- the run ------------------------------------------------------------------------------------------------


SYSTEMS = ("mlserver0", "mlserver", "mlflow", "railyard", "raw")


def run_round(order: list[str], folder: Path, results: Results, variants: dict[str, dict]
              ) -> dict[str, dict[str, dict[str, float]]]:
    figures: dict[str, dict[str, dict[str, float]]] = {}
    first = not results.rounds
    index = len(results.rounds)

    def take(systems: Iterator) -> None:
        for label, targets, rss in systems:
            for model, target in targets.items():
                print(f"  {label} / {model} ...", flush=True)
                figures.setdefault(label, {})[model] = uvloop.run(measure(target, model))
            if rss is not None and first:
                results.memory[f"{label} processes"] = rss()

    for system in order:
        print(f"{system} (load {uptime()})", flush=True)
        if system == "raw":
            figures["onnxruntime"] = {model: raw_onnxruntime(model) for model in MEASURED}
        elif system.startswith("mlserver"):
            take(mlserver(folder, 0 if system == "mlserver0" else None))
        elif system == "mlflow":
            take(mlflow_serve(folder))
        elif system == "railyard":
            take(railyard(folder, variants, index, results))
    return figures


def main() -> int:
    wanted = [s for s in os.environ.get("BENCH_SYSTEMS", ",".join(SYSTEMS)).split(",") if s]
    variants = {"default": {}}
    for spec in filter(None, os.environ.get("BENCH_RAILYARD_VARIANTS", "").split(";")):
        name, _, config = spec.partition(":")
        variants[name] = json.loads(config)
    results = Results()
    results.machine = machine_state()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="railyard-bench-peers-") as tmp:
        folder = Path(tmp)
        for order in (wanted, wanted[::-1]):
            results.load.append(uptime())
            print(f"round {len(results.rounds) + 1}: {' -> '.join(order)}", flush=True)
            results.rounds.append(run_round(order, folder, results, variants))
        results.load.append(uptime())
    text = report(results, time.monotonic() - started)
    print(text)
    if os.environ.get("BENCH_NO_DOCS") != "1" and not QUICK:
        write_docs(text)
    return 0


# --- the report ------------------------------------------------------------------------------------------------


def _span(values: list[float], digits: int, suffix: str = "") -> str:
    low, high = min(values), max(values)
    fmt = f"{{:,.{digits}f}}"
    return fmt.format(low) + suffix if fmt.format(low) == fmt.format(high) else \
        f"{fmt.format(low)}-{fmt.format(high)}{suffix}"


def _ratio(results: Results, system: str, peer: str, model: str, measure: str) -> list[float]:
    out = []
    for figures in results.rounds:
        if system in figures and peer in figures and model in figures[system] and model in figures[peer]:
            out.append(figures[system][model][measure] / figures[peer][model][measure])
    return out


LABELS = {"p50_ms": ("batch-1 p50, 1 connection", 3, " ms"), "p99_ms": ("batch-1 p99, 1 connection", 3, " ms"),
          "rps8": ("batch-1 req/s, 8 connections", 0, ""), "rps32": ("batch-1 req/s, 32 connections", 0, ""),
          "rows1000": ("batch-1000 rows/s, 4 connections", 0, "")}


def report(results: Results, seconds: float) -> str:  # noqa: C901 - one table after another
    systems = list(dict.fromkeys(s for figures in results.rounds for s in figures))
    lines = [START_MARK, "## Side by side: Railyard, MLServer, mlflow (`make bench-peers`)", "",
             f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC{' (QUICK mode: short loops)' if QUICK else ''}, "
             f"{seconds / 60:.1f} min, Python {platform.python_version()}, {len(os.sched_getaffinity(0))} cores. "
             f"Load average (1, 5, 15 min) before round 1, before round 2, after: {'; '.join(results.load)}; "
             f"at the start the machine was {results.machine or 'not read'}. "
             "Two rounds in opposite order, one system up at a time (Railyard's forms and models too: "
             f"{', '.join(RAILYARD_FORMS)}, each {' then '.join(MEASURED)}, in round 1, the reverse in round 2"
             f"{'' if ALTERNATE else ' (not this run: BENCH_FIXED_ORDER=1)'}); each cell is the range over the rounds. "
             "Same model bytes, same load generator (bench/loadgen.py); Railyard with tokens checked and every row "
             "logged. MLServer 1.7 and the raw baseline run onnxruntime with one intra-op thread (as a replica "
             "with cpus 1); mlflow with its own defaults. MLServer answers OIP v2 JSON, mlflow its "
             "`dataframe_records` JSON; raw onnxruntime is in-process (its req/s is 1/p50). Railyard's figures of "
             "a form start once its stack has stored every row it was sent, the previous form's batch-1000 rows "
             "included (its replicas hold none for the log and its log store has acknowledged every message of the "
             f"log stream; waited for up to {LOG_WAIT_MAX:.0f} s"
             f"{'' if LOG_WAIT else ' (not this run: BENCH_NO_LOG_WAIT=1)'}; peers log nothing), and every "
             "system's batch-1 figures once the machine is idle (busy CPU under "
             f"{SETTLE_CORES} cores over {SETTLE_WINDOW:.0f} s, waited for up to {SETTLE_MAX:.0f} s); both waits are "
             "in the tables. Beside batch-1000 rows/s, the "
             "load generator's own CPU a request: the same work in every round of a system, so a round where it is "
             "higher had a slower machine, and the share of the VM's CPU the host stole meanwhile (a stretch of "
             "25-36 % made a round's Arrow forms stall in session 39, docs/performance.md item 102). Before each "
             "system's figures the machine's dirty page cache is written to disk (sync): Railyard's logged rows of "
             "an earlier form would otherwise go in one burst 30 s later, inside another form's figures "
             "(docs/performance.md item 93).", ""]
    for model in [m for m in MODELS if any(m in f.get(s, {}) for f in results.rounds for s in systems)]:
        present = [s for s in systems if any(model in f.get(s, {}) for f in results.rounds)]
        lines += [f"### {model}", "", "| measure | " + " | ".join(present) + " |",
                  "|---" * (len(present) + 1) + "|"]
        for measure, (label, digits, suffix) in LABELS.items():
            cells = []
            for system in present:
                values = [f[system][model][measure] for f in results.rounds if model in f.get(system, {})]
                cells.append(_span(values, digits, suffix) if values else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            if measure == "p99_ms":  # the tail target's own measure, for every system: what this VM allows
                tails = [[f[s][model]["p99_ms"] / f[s][model]["p50_ms"] for f in results.rounds
                          if model in f.get(s, {})] for s in present]
                lines.append("| batch-1 p99 / own p50 | " + " | ".join(_span(t, 2, "x") if t else "" for t in tails)
                             + " |")
                waits = [[f[s][model]["settle_s"] for f in results.rounds
                          if "settle_s" in f.get(s, {}).get(model, {})] for s in present]
                lines.append("| waited for an idle machine before batch-1 | "
                             + " | ".join(_span(w, 1, " s") if w else "" for w in waits) + " |")
                logged = [[f[s][model]["log_wait_s"] for f in results.rounds
                           if "log_wait_s" in f.get(s, {}).get(model, {})] for s in present]
                if any(logged):
                    lines.append("| waited for Railyard's log path to store the earlier rows | "
                                 + " | ".join(_span(w, 1, " s") if w else "" for w in logged) + " |")
            if measure == "rows1000":  # the machine's speed in each round's window: same work, same CPU on a
                # machine as fast (item 93); by system, so across its rounds
                meters = [[f[s][model]["loadgen_us"] for f in results.rounds
                           if "loadgen_us" in f.get(s, {}).get(model, {})] for s in present]
                lines.append("| load generator's CPU a batch-1000 request (the machine's speed) | "
                             + " | ".join(_span(m, 0, " us") if m else "" for m in meters) + " |")
                stolen = [[100 * f[s][model]["steal"] for f in results.rounds
                           if "steal" in f.get(s, {}).get(model, {})] for s in present]
                lines.append("| the host's steal of the VM's CPU during the figures | "
                             + " | ".join(_span(v, 0, " %") if v else "" for v in stolen) + " |")
        lines.append("")
        ours = [s for s in present if s.startswith("Railyard")]
        peers = [s for s in present if s not in ours]
        if ours and peers:
            lines += ["Ratios, Railyard / peer (per round; latency: lower is better, throughput: higher):", "",
                      "| Railyard | measure | " + " | ".join(peers) + " |", "|---|---" + "|---" * len(peers) + "|"]
            for system in ours:
                for measure, (label, _, _) in LABELS.items():
                    cells = [_span(r, 2, "x") if (r := _ratio(results, system, peer, model, measure)) else ""
                             for peer in peers]
                    lines.append(f"| {system} | {label} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += targets(results, model, ours)
    memory = results.memory
    if memory:
        lines += ["### Memory (RSS, round 1)", ""]
        if "stack_idle" in memory:
            lines.append(f"- idle embedded stack, every process: {_mib(memory['stack_idle'])} (target: <= 1024 MiB)")
        for index, figures in enumerate(memory.get("replicas", [])):
            lines.append(f"- ONNX engine replica {index + 1} (one model), right after its load: {_mib(figures)}")
        for index, figures in enumerate(memory.get("replicas_idle", [])):
            lines.append(f"- ONNX engine replica {index + 1} (one model), 5 s later: {_mib(figures)}")
        for key, value in memory.items():
            if key.endswith(" processes"):
                lines.append(f"- {key[:-10]}, its processes after the load: {_mib(value)}")
        lines.append("")
    if results.pipeline:
        p = results.pipeline[0]
        lines += ["### A Python step (sandboxed worker) against the ONNX model, records JSON", "",
                  f"- batch-1 p50: Python {p['python_p50_ms']:.2f} ms, ONNX {p['onnx_p50_ms']:.2f} ms "
                  f"({p['python_p50_ms'] / p['onnx_p50_ms']:.2f}x)",
                  f"- batch-1000 rows/s, 4 connections: Python {p['python_rows1000']:,.0f}, ONNX "
                  f"{p['onnx_rows1000']:,.0f} ({p['python_rows1000'] / p['onnx_rows1000']:.2f}x)", ""]
    if results.options:
        lines += ["### Engine options, ccfraud (round 1, one deployment after another)", "",
                  "| engine_config | records batch-1 p50 | records batch-1 req/s, 32 connections | "
                  "Arrow batch-1000 rows/s | records batch-1000 rows/s |", "|---|---|---|---|---|"]
        for label, f in results.options.items():
            lines.append(f"| {label} | {f['p50_ms']:.3f} ms | {f['rps32']:,.0f} | {f['arrow1000']:,.0f} | "
                         f"{f['records1000']:,.0f} |")
        lines.append("")
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


def targets(results: Results, model: str, ours: list[str]) -> list[str]:
    """The issue's targets, checked on this model for the default Railyard deployment."""
    peer = "MLServer pw=0"
    if not any(peer in f for f in results.rounds):
        return []
    checks = []
    for form in ("records", "Arrow", "OIP v2"):
        system = f"Railyard {form}"
        if system not in ours:
            continue
        p50 = _ratio(results, system, peer, model, "p50_ms")
        tail = [f[system][model]["p99_ms"] / f[system][model]["p50_ms"] for f in results.rounds if system in f]
        checks += [(f"{form}: batch-1 p50 <= 1.3x MLServer pw=0", p50, 1.3, False),
                   (f"{form}: batch-1 p99 <= 2x own p50", tail, 2.0, False),
                   (f"{form}: 8 connections >= 1.3x MLServer pw=0", _ratio(results, system, peer, model, "rps8"),
                    1.3, True),
                   (f"{form}: 32 connections >= 1.5x MLServer pw=0", _ratio(results, system, peer, model, "rps32"),
                    1.5, True)]
    checks += [("OIP v2: batch-1000 >= 1.0x MLServer pw=0", _ratio(results, "Railyard OIP v2", peer, model,
                                                                   "rows1000"), 1.0, True),
               ("Arrow: batch-1000 >= 2x MLServer pw=0's OIP JSON", _ratio(results, "Railyard Arrow", peer, model,
                                                                          "rows1000"), 2.0, True),
               ("records: batch-1000 >= 0.5x MLServer pw=0", _ratio(results, "Railyard records", peer, model,
                                                                    "rows1000"), 0.5, True),
               ("records: batch-1000 >= 5x mlflow serve", _ratio(results, "Railyard records", "mlflow serve", model,
                                                                 "rows1000"), 5.0, True)]
    lines = ["| target (issue 20) | measured | met |", "|---|---|---|"]
    for label, values, bound, higher in checks:
        if not values:
            continue
        met = all(v >= bound for v in values) if higher else all(v <= bound for v in values)
        lines.append(f"| {label} | {_span(values, 2, 'x')} | {'yes' if met else 'no'} |")
    return lines + [""]


def write_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        text = head + section + rest.split(END_MARK, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)
