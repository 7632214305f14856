"""Where a replica runs a table through its pipeline (services/engine/handlers.py runs_inline): on the event loop
when the pipeline's learnt CPU time for that many rows is under INLINE_NS and the table has at most INLINE_MAX_ROWS
rows (replica.Replica.run learns it from runs of LEARN_ROWS rows or more of a pipeline of one model a step, the
largest of the last LEARN_RUNS runs), in a thread otherwise; up to INLINE_ROWS rows until a run has taught it and
always for an A/B split or a shadow deployment; always in the thread with a sandboxed worker. Runs of fewer rows
teach the time a call takes (Replica.learn): a slow one sends every run to the thread; and until any run has been
measured (the replica's first), a run takes the thread."""

from __future__ import annotations

import time

import pyarrow as pa

from services.engine import handlers
from services.engine.replica import LEARN_ROWS, LEARN_RUNS, Replica
from shared.settings import Settings


class Busy:
    """A step of one model whose run takes `ns_per_row` of CPU per row."""

    kind = "ModelInference"
    model = {"name": "m", "sha": "abc"}

    def __init__(self, ns_per_row: int, kind: str = "ModelInference") -> None:
        self.ns_per_row = ns_per_row
        self.kind = kind
        self.runtimes = [self] if kind == "ModelInference" else [self, self]

    def run(self, table: pa.Table):
        until = time.thread_time_ns() + self.ns_per_row * table.num_rows
        while time.thread_time_ns() < until:
            pass
        return table, self.model, []


def _replica(tmp_path, ns_per_row: int, kind: str = "ModelInference") -> Replica:
    spec = {"deployment": {"name": "d", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1}, "steps": []}
    replica = Replica(spec, "r1", Settings(stack={"data_dir": tmp_path}))
    replica.steps = [Busy(ns_per_row, kind)]
    return replica


def _table(rows: int) -> pa.Table:
    return pa.table({"x": pa.array(range(rows), pa.float32())})


def test_until_a_run_has_taught_it_up_to_inline_rows_run_inline(tmp_path):
    replica = _replica(tmp_path, 0)
    assert not handlers.runs_inline(replica, 1)  # nothing measured yet: the first run takes the thread
    replica.run(_table(1))  # a quick call
    assert handlers.runs_inline(replica, 1) and handlers.runs_inline(replica, handlers.INLINE_ROWS)
    assert not handlers.runs_inline(replica, handlers.INLINE_ROWS + 1)
    replica.run(_table(LEARN_ROWS - 1))  # too few rows to learn a time per row from (fixed costs)
    assert replica.ns_per_row is None and not handlers.runs_inline(replica, 1000)


def test_a_slow_call_of_few_rows_sends_every_run_to_the_thread(tmp_path):
    replica = _replica(tmp_path, 100)
    replica.run(_table(1000))  # quick per row: a 1,000-row table and a 1-row one run inline
    assert handlers.runs_inline(replica, 1000) and handlers.runs_inline(replica, 1)
    replica.steps = [Busy(2 * handlers.INLINE_NS)]  # a model of 2 ms a call, one row at a time (2 s: killed as hung)
    replica.run(_table(1))
    assert replica.ns_per_call >= handlers.INLINE_NS
    assert not handlers.runs_inline(replica, 1) and not handlers.runs_inline(replica, 1000)
    replica.steps = [Busy(100)]
    for _ in range(LEARN_RUNS - 1):  # quick calls after it: the slow one still counts
        replica.run(_table(1))
        assert not handlers.runs_inline(replica, 1)
    replica.run(_table(1))  # the slow call has left the window
    assert handlers.runs_inline(replica, 1) and handlers.runs_inline(replica, 1000)


def test_a_call_the_fast_lane_found_slow_sends_the_next_to_the_thread_where_it_is_measured(tmp_path):
    replica = _replica(tmp_path, 100)
    replica.run(_table(100))
    assert handlers.runs_inline(replica, 1) and handlers.runs_inline(replica, 100)
    replica.held_loop(5 * handlers.INLINE_NS)  # a lane's call held the loop 5 ms (its wall clock)
    assert not handlers.runs_inline(replica, 1) and not handlers.runs_inline(replica, 100)
    replica.run(_table(100))  # measured quick (it was preempted, say): the next run is inline again
    assert handlers.runs_inline(replica, 1) and handlers.runs_inline(replica, 100)
    replica.held_loop(5 * handlers.INLINE_NS)
    replica.steps = [Busy(2 * handlers.INLINE_NS)]  # measured slow: it stays in the thread
    replica.run(_table(1))
    assert not handlers.runs_inline(replica, 1)


def test_a_fast_pipeline_runs_large_tables_inline_and_a_slow_one_in_a_thread(tmp_path):
    # learnt from a run of INLINE_MAX_ROWS rows (~0.04 ms of its busy loop): the run as a whole, the replica's own
    # ~5-40 us included, has ~1 ms to stay under INLINE_NS, not the ~0.15 ms a 1,000-row run of 100 ns a row left
    fast = _replica(tmp_path, 10)
    fast.run(_table(handlers.INLINE_MAX_ROWS))
    assert handlers.runs_inline(fast, 1000) and handlers.runs_inline(fast, handlers.INLINE_MAX_ROWS)
    assert not handlers.runs_inline(fast, handlers.INLINE_MAX_ROWS + 1)  # past the cap: the thread, whatever it took
    slow = _replica(tmp_path, 5_000)  # 1,000 rows: ~5 ms
    slow.run(_table(LEARN_ROWS))
    assert not handlers.runs_inline(slow, 1000) and handlers.runs_inline(slow, 100)


def test_a_slow_run_counts_at_once_and_for_the_next_runs(tmp_path):
    # decided for tables of 100 rows: slow is 20 us of CPU a row (2 ms), fast is under 10 us a row, 640 us a 64-row
    # run, of which the busy loop takes 6 us and the replica's own work ~4 us (44 us the most in 2,000 idle runs).
    # Decided for 1,000 and 4,096 rows, each fast 64-row run had to stay under 64 us and the first run under 244 us
    # (~120 us idle): ~0.06 and ~0.12 ms of slack in a thread's CPU time, and the test failed once at load ~11
    replica = _replica(tmp_path, 100)
    replica.run(_table(1000))
    assert handlers.runs_inline(replica, 100)
    replica.steps = [Busy(20_000)]  # one slow input (or the model became slow)
    replica.run(_table(LEARN_ROWS))
    replica.steps = [Busy(100)]
    for _ in range(LEARN_RUNS - 1):  # fast runs after it: the slow one still counts
        replica.run(_table(LEARN_ROWS))
        assert not handlers.runs_inline(replica, 100)
    replica.run(_table(LEARN_ROWS))  # the slow run has left the window
    assert handlers.runs_inline(replica, 100)


def test_an_ab_split_or_a_shadow_deployment_keeps_the_rows_rule_and_a_worker_the_thread(tmp_path):
    for kind in ("RandomSplit", "ShadowDeploy"):  # its arms differ: one time per row would mislead
        replica = _replica(tmp_path, 100, kind)
        replica.run(_table(1000))
        assert replica.ns_per_row is None and not handlers.runs_inline(replica, 1000)
        replica.run(_table(1))  # a quick call (the time per call: the largest of the arms' recent ones)
        assert handlers.runs_inline(replica, handlers.INLINE_ROWS)
        replica.steps = [Busy(2 * handlers.INLINE_NS, kind)]  # an arm of 2 ms a call
        replica.run(_table(1))
        assert not handlers.runs_inline(replica, 1)
    replica = _replica(tmp_path, 100)
    replica.run(_table(1000))
    replica.workers = [object()]
    assert not handlers.runs_inline(replica, 1)
