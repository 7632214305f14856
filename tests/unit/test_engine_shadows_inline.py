"""The engine's challengers (services/engine/handlers.py run_challengers, one loop for both paths): with
`Railyard-Shadows: inline` they run before the answer, which carries their outputs as `out_<challenger>.<output>`
columns; without it they are left for after the answer, where the replica's shadow queue runs them into the request's
log record (replica.py), as always. A failing or slow challenger is left out on both paths."""

from __future__ import annotations

import asyncio
import json
import time

import pyarrow as pa

from services.engine import handlers
from services.engine.replica import Replica
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.logrecords import InferenceRecord
from shared.settings import Settings
from shared.table_transport import META_HEADER, SHADOWS_HEADER, SHADOWS_INLINE


class Doubler:
    def predict(self, table: pa.Table) -> pa.Table:
        return pa.table({"y": pa.array([v * 2 for v in table.column("x").to_pylist()])})


class Failing:
    def predict(self, table: pa.Table) -> pa.Table:
        raise RuntimeError("broken challenger")


class Slow:
    def predict(self, table: pa.Table) -> pa.Table:
        time.sleep(0.3)
        return table


class FakePipeline:
    spec = {"deployment": {"pipeline_version": "v1"}}
    store = None
    workers: list = []

    def narrow(self, table):
        return table

    def run(self, table):
        output = pa.table({"y": pa.array([v + 1 for v in table.column("x").to_pylist()])})
        shadows = [("twice", Doubler(), table), ("broken", Failing(), table)]
        return output, [5], {"name": "champ", "sha": "abc"}, shadows


def _infer(headers):
    body = to_ipc_stream(pa.table({"x": pa.array([1, 2])}))
    return asyncio.run(handlers.infer(FakePipeline(), body, headers, 0, 8 * 1024 * 1024))


def test_inline_shadows_ride_in_the_answer_and_the_record():
    answer = _infer({SHADOWS_HEADER: SHADOWS_INLINE})
    table = from_ipc(answer.body)
    assert table.column_names == ["y", "out_twice.y"]
    assert table.column("y").to_pylist() == [2, 3] and table.column("out_twice.y").to_pylist() == [2, 4]
    assert answer.output.column_names == ["y"]  # the record's own output is the champion's
    assert answer.shadows == [] and set(answer.shadow_outputs) == {"twice"}  # the failing one is left out
    meta = json.loads(answer.headers[META_HEADER])
    assert set(meta["shadow_elapsed"]) == {"twice"} and meta["shadow_elapsed"]["twice"] > 0


def test_without_the_header_challengers_run_after_the_answer():
    answer = _infer(None)
    assert from_ipc(answer.body).column_names == ["y"]
    assert [name for name, _, _ in answer.shadows] == ["twice", "broken"] and answer.shadow_outputs is None
    assert "shadow_elapsed" not in json.loads(answer.headers[META_HEADER])


def test_a_slow_challenger_is_left_out_and_the_others_are_timed(monkeypatch):
    monkeypatch.setattr(handlers, "SHADOW_TIMEOUT", 0.05)
    table = pa.table({"x": pa.array([1, 2])})
    outputs: dict[str, pa.Table] = {}
    elapsed = asyncio.run(handlers.run_challengers([("slow", Slow(), table), ("twice", Doubler(), table)], outputs))
    assert set(outputs) == set(elapsed) == {"twice"} and outputs["twice"].column("y").to_pylist() == [2, 4]


def _record(table: pa.Table) -> InferenceRecord:
    return InferenceRecord(0, table, table, "", (0, 0))


def test_after_the_answer_the_replica_runs_challengers_into_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path))
    table = pa.table({"x": pa.array([1, 2])})

    async def scenario():
        replica = Replica({"deployment": {"name": "d"}}, "r1", Settings())
        logged: list[InferenceRecord] = []
        replica.log_record = logged.append
        worker = asyncio.create_task(replica.run_shadows())
        replica.shadow_queue.put_nowait((_record(table), [("twice", Doubler(), table), ("broken", Failing(), table)]))
        await asyncio.wait_for(replica.shadow_queue.join(), 5)
        # stopping while a slow challenger runs: the record is logged with the challengers already done
        replica.shadow_queue.put_nowait((_record(table), [("twice", Doubler(), table), ("slow", Slow(), table)]))
        await replica.drain_shadows(worker, 0.1)
        return logged

    first, second = asyncio.run(scenario())
    assert set(first.shadows) == {"twice"} and first.shadows["twice"].column("y").to_pylist() == [2, 4]
    assert set(second.shadows) == {"twice"}
