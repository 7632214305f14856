"""The engine's inline shadow path (services/engine/handlers.py): with `Railyard-Shadows: inline` the challengers run
before the answer, which carries their outputs as `out_<challenger>.<output>` columns; without it they are left for
after the answer (the log only), as always."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa

from services.engine import handlers
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.table_transport import META_HEADER, SHADOWS_HEADER, SHADOWS_INLINE


class Doubler:
    def predict(self, table: pa.Table) -> pa.Table:
        return pa.table({"y": pa.array([v * 2 for v in table.column("x").to_pylist()])})


class Failing:
    def predict(self, table: pa.Table) -> pa.Table:
        raise RuntimeError("broken challenger")


class FakePipeline:
    spec = {"deployment": {"pipeline_version": "v1"}}
    store = None
    workers: list = []

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
