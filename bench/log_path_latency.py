"""`python -m bench.log_path_latency [burners] [rounds]`: how long an inference's record takes to become a readable
log row, split at INFERENCE_LOGS: inference time -> the engine's publish (a core subscriber on `logs.inference.>`
sees it) -> the row in get_logs. Rounds alternate idle and `burners` (default 8) CPU-bound processes, which is how
docs/assays.md (Scheduling) measured the figures behind the scheduler's wait for the log store. Starts its own
embedded stack with one deployed ccfraud pipeline; prints one line per round with the 1-minute load. Run from the
tree (cwd and PYTHONPATH)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time

import httpx
import nats

from bench import stack_with_pipeline
from tests.models import ccfraud_onnx, sample_rows

SAMPLES = 8
NAME = "logpath"


def _burn(stop_at: float) -> None:
    spin = 0
    while time.time() < stop_at:
        spin += 1


def _answer(reply: httpx.Response) -> dict:
    """A set-up call's JSON answer; a refusal ends the run with its status and body (the API's code and message),
    not raise_for_status's bare status line."""
    if reply.status_code >= 400:
        raise SystemExit(f"{reply.request.method} {reply.request.url.path}: {reply.status_code} {reply.text[:2000]}")
    return reply.json()


def main(burners: int, rounds: int) -> int:
    with stack_with_pipeline(NAME) as bench:
        api = bench.stack.api
        headers = {"Authorization": f"Bearer {bench.token}"}
        http = httpx.Client(timeout=60, headers=headers)
        _answer(http.post(f"{api}/models/upload_stream", files={"file": ("ccfraud", ccfraud_onnx())},
                          data={"name": "ccfraud", "workspace_id": bench.workspace}))
        version = _answer(http.post(f"{api}/pipelines/create", json={
            "pipeline_id": NAME, "workspace_id": bench.workspace,
            "definition": {"steps": [{"ModelInference": {"models": [{"name": "ccfraud"}]}}]}}))
        _answer(http.post(f"{api}/pipelines/deploy", json={
            "deploy_id": NAME, "pipeline_version_pk_id": version["pipeline_variant_pk_id"],
            "pipeline_id": bench.pipeline_id}))
        url = _answer(http.post(f"{api}/admin/get_pipeline_external_url", json={
            "workspace_id": bench.workspace, "pipeline_name": NAME}))["url"]
        body = [{"tensor": row.tolist()} for row in sample_rows(6, seed=3)]

        arrivals: list[float] = []

        def listen() -> None:
            async def run() -> None:
                async def quiet(exc: Exception) -> None:  # the stack stops under it at the end
                    pass

                nc = await nats.connect(bench.stack.settings().nats.url, allow_reconnect=False, error_cb=quiet)

                async def seen(msg) -> None:
                    if msg.subject.startswith(f"logs.inference.{NAME}-"):
                        arrivals.append(time.time())

                await nc.subscribe("logs.inference.>", cb=seen)
                await asyncio.Event().wait()  # until the process ends (a daemon thread)

            asyncio.run(run())

        threading.Thread(target=listen, daemon=True).start()

        def logged() -> tuple[int, int]:
            reply = http.post(f"{api}/pipelines/get_logs", json={
                "pipeline_id": NAME, "workspace_id": bench.workspace, "page_size": 100_000})
            rows = reply.json() if reply.status_code == 200 else []
            return len(rows), max((row["time"] for row in rows), default=0)

        deadline = time.monotonic() + 180  # the replica starts
        while http.post(url, json=body, headers={"Content-Type": "application/json; format=pandas-records"}
                        ).status_code != 200:
            assert time.monotonic() < deadline, "the pipeline did not serve"
            time.sleep(1)
        time.sleep(3)
        for round_ in range(rounds):
            load = burners if round_ % 2 else 0
            procs = [multiprocessing.Process(target=_burn, args=(time.time() + 120,)) for _ in range(load)]
            for proc in procs:
                proc.start()
            time.sleep(1)
            to_stream, to_readable, total = [], [], []
            try:
                for _ in range(SAMPLES):
                    before, _ = logged()
                    heard = len(arrivals)
                    reply = http.post(url, json=body,
                                      headers={"Content-Type": "application/json; format=pandas-records"})
                    reply.raise_for_status()
                    waited_until = time.monotonic() + 60  # a row that never becomes readable ends the run
                    while (found := logged())[0] < before + len(body):
                        if time.monotonic() > waited_until:
                            raise RuntimeError(f"{len(body)} logged rows not readable within 60 s")
                        time.sleep(0.02)
                    readable, row_time = time.time(), found[1] / 1000
                    published = arrivals[heard] if len(arrivals) > heard else float("nan")
                    to_stream.append(published - row_time)
                    to_readable.append(readable - published)
                    total.append(readable - row_time)
                    time.sleep(0.3)
            finally:
                for proc in procs:
                    proc.terminate()
            print(f"{'load' if load else 'idle'} ({load} burners, load1 {os.getloadavg()[0]:.1f}): "
                  f"row -> readable {min(total):.2f}-{max(total):.2f} s (over 1 s: {sum(t > 1 for t in total)} of "
                  f"{len(total)}); engine -> stream {min(to_stream):.2f}-{max(to_stream):.2f} s; "
                  f"stream -> readable {min(to_readable):.2f}-{max(to_readable):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, int(sys.argv[2]) if len(sys.argv) > 2 else 4))
