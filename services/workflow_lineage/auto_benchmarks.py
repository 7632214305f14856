"""Automatic benchmarks (seed 002): when a task run that declared an evaluation set (an input link with
`evaluation`) outputs a model version, and a deployment serves that model version, the model version is
benchmarked on the evaluation set once, without anyone asking.

How "once" holds: drawing the graph (an event, or an explicit link) ends with `claim_ready_evaluations` in the same
transaction, which inserts one claim per (task run, model version) under a unique key, so a redelivered or repeated
event adds nothing. The worker takes a claim (`FOR UPDATE SKIP LOCKED`, marked running), runs the benchmark through
the deployment's engine, and stores the report in the transaction that marks the claim done; a worker that dies
mid-run leaves a running claim that is taken again after STALE_SECONDS, and a failure is retried twice before the
claim is marked failed with its reason.

Authority: nobody's token is at hand when the last event arrives. The declaration was made by a member of the
run's workspace (the run's own scoped token, or a member naming the run); the data, the run and the deployment are
cards of that one workspace's graph, and the engine call carries no token (as the gateway's inference path, the
bus permissions decide who may send it). The report is created_by the declaring user."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from services.workflow_lineage import store
from shared.background import Sweeper
from shared.errors import InvalidRequest, RailyardError
from shared.messages.lineage import DatasetChoice, EvaluationSpec

if TYPE_CHECKING:
    from services.workflow_lineage.benchmark_runs import Infer

log = logging.getLogger("railyard.workflow_lineage.auto_benchmarks")

POLL_SECONDS = 60.0
"""The longest wait between looks for due claims: those another process made (this one's wake the worker)."""
FAILED_SWEEP_WAIT = 5.0  # a sweep that failed (the database away for a moment) looks again this soon
STALE_SECONDS = 600.0
MAX_ATTEMPTS = 3
RETRY_SECONDS = 30.0


class AutoBenchmarks(Sweeper):
    """The worker: wakes when a claim is made, or when the next claim is due (a retry, a stale claim; at most every
    POLL_SECONDS), and runs due claims one at a time (the database away for a moment: the next round tries again).
    It looked every 5 s, which kept a PostgreSQL backend open for good in an idle stack; a look after a long wait
    closes the connection it opened (`Sweeper.quiet_pool`)."""

    task_name = "auto-benchmarks"
    every, log, failure = POLL_SECONDS, log, "automatic benchmarks: could not take a claim"

    def __init__(self, deps: Any, infer: Infer) -> None:
        self.deps = deps
        self.infer = infer
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def wake_event(self) -> asyncio.Event:
        return self._wake

    def quiet_pool(self) -> Any:
        return self.deps.pool

    async def sweep(self) -> float:
        """Run every due claim; the seconds until the next one is due (POLL_SECONDS when there is none)."""
        while await self.run_one():
            pass
        due = await store.next_auto_benchmark(self.deps.pool, STALE_SECONDS)
        # no claim pending or running: the longest wait. None is a failed sweep's (Sweeper), FAILED_SWEEP_WAIT:
        # returned for "no claim", the worker of a stack with no claim at all looked every 5 s as before
        return POLL_SECONDS if due is None else due

    def next_wait(self, result: float | None) -> float:
        # until the next claim is due (a retry's next_try, a running claim's stale time), at most POLL_SECONDS: a
        # claim this process makes wakes it, one another process makes is seen within POLL_SECONDS
        return FAILED_SWEEP_WAIT if result is None else min(max(result, 1.0), POLL_SECONDS)

    async def run_one(self) -> bool:
        """Run the next due claim; False when there is none."""
        claim = await store.take_auto_benchmark(self.deps.pool, STALE_SECONDS)
        if claim is None:
            return False
        try:
            row = await run_claim(self.deps, self.infer, claim)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.msg if isinstance(exc, RailyardError) else f"{type(exc).__name__}: {exc}"
            final = isinstance(exc, RailyardError) and exc.status < 500 or claim["attempts"] >= MAX_ATTEMPTS
            log.warning("automatic benchmark of %s (run %s) failed%s: %s", claim["model_version"],
                        claim["task_run"], "" if final else ", will retry", reason)
            await store.fail_auto_benchmark(self.deps.pool, claim["id"], claim["attempts"], reason,
                                            None if final else RETRY_SECONDS * claim["attempts"])
            return True
        if row is not None:
            from services.workflow_lineage import benchmark_runs

            benchmark_runs.report_completed(self.deps, row)
        return True


async def run_claim(deps: Any, infer: Infer, claim: Any) -> Any:
    """Benchmark the claim's model version on its evaluation set through its deployment; the stored report (None
    when another worker finished the claim first)."""
    from services.workflow_lineage import benchmark_runs  # numpy, pyarrow, Pillow: loaded when a claim runs

    declared = json.loads(claim["evaluation"]) if isinstance(claim["evaluation"], str) else claim["evaluation"]
    spec = EvaluationSpec.model_validate(declared["spec"])
    workspace_id = claim["workspace_id"]
    name = f"auto: run {claim['task_run']} model {claim['model_version']}"[:200]
    choice = DatasetChoice(workspace_id=workspace_id, name=name, **declared["data"])
    chosen = await benchmark_runs.choose(deps, choice)
    route = {"name": claim["deployment"], "pipeline_version": claim["pipeline_version"],
             "model_version": claim["model_version"], "workspace_id": workspace_id}
    if chosen["kind"] == "tabular":
        task = "classification"
        if spec.output_column is None:
            raise InvalidRequest("the evaluation set is tabular: declare its output_column")
        table = await benchmark_runs.classification_rows(deps, chosen, spec.label_column)
        candidates = await benchmark_runs.classification_candidates(infer, [route], table, spec)
    else:
        task = "detection"
        if spec.image is None:
            raise InvalidRequest("the evaluation set is an images dataset: declare its image config")
        truth = benchmark_runs.detection_truth(chosen)
        candidates = await benchmark_runs.detection_candidates(deps, infer, [route], chosen, truth, spec)
    trigger = {"automatic": {"task_run": claim["task_run"], "model_version": claim["model_version"]}}
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            row = await benchmark_runs.insert_report(conn, workspace_id, name, task, chosen, candidates,
                                                     declared["declared_by"], trigger)
            if not await store.finish_auto_benchmark(conn, claim["id"], claim["attempts"], row["id"]):
                raise _Superseded
    except _Superseded:
        return None
    return row


class _Superseded(Exception):
    """Another worker took the claim again meanwhile: this run's report is rolled back."""
