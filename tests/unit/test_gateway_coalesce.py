"""The gateway's coalescing of concurrent inferences to one deployment (services/gateway/coalesce.py): while one
message is on its way, the requests of one turn of the event loop travel as one table and get their own rows back;
a failed shared request is retried alone per request, so only the bad one fails; a lone request goes at once."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa

from services.gateway.coalesce import Coalescer
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.bus import ERROR_HEADER
from shared.errors import InvalidRequest


class Engine:
    """Doubles x; a negative x fails the whole table, as a NaN fails a model call."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def __call__(self, deployment: str, payload: bytes) -> tuple[dict[str, str], bytes]:
        table = from_ipc(payload)
        self.sent.append(table.num_rows)
        await asyncio.sleep(0)
        values = table.column("x").to_pylist()
        if any(v < 0 for v in values):
            return {ERROR_HEADER: json.dumps({"code": "invalid_request", "msg": "negative", "status": 400})}, b""
        return {"Railyard-Meta": "{}"}, to_ipc_stream(pa.table({"y": [2 * v for v in values]}))


def _ask_all(engine: Engine, tables: list[pa.Table]) -> list:
    async def main():
        coalescer = Coalescer(engine)
        return await asyncio.gather(*(coalescer.ask("d-1", t) for t in tables), return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_requests_share_one_message_and_get_their_own_rows():
    engine = Engine()
    tables = [pa.table({"x": list(range(10 * i, 10 * i + n))}) for i, n in enumerate((4, 1, 3, 2))]
    results = _ask_all(engine, tables)
    assert engine.sent == [4, 6]  # the first goes at once, the three behind it together
    for table, (headers, outputs) in zip(tables, results, strict=True):
        assert outputs.column("y").to_pylist() == [2 * v for v in table.column("x").to_pylist()]
        assert headers == {"Railyard-Meta": "{}"}


def test_a_bad_request_fails_alone():
    engine = Engine()
    results = _ask_all(engine, [pa.table({"x": [0]}), pa.table({"x": [1]}), pa.table({"x": [-1]}),
                                pa.table({"x": [3, 4]})])
    assert engine.sent == [1, 4, 1, 1, 2]  # the first at once; then shared, failed, and each alone
    assert results[1][1].column("y").to_pylist() == [2] and results[3][1].column("y").to_pylist() == [6, 8]
    assert isinstance(results[2], InvalidRequest)


def test_a_lone_request_and_other_schemas_go_alone():
    engine = Engine()
    results = _ask_all(engine, [pa.table({"x": [0]}), pa.table({"x": [1]}), pa.table({"x": pa.array([2.5])})])
    assert sorted(engine.sent) == [1, 1, 1]
    assert results[2][1].column("y").to_pylist() == [5.0]


def test_a_lone_request():
    engine = Engine()
    (result,) = _ask_all(engine, [pa.table({"x": [7]})])
    assert engine.sent == [1] and result[1].column("y").to_pylist() == [14]


def test_tables_above_the_row_cap_are_split():
    engine = Engine()
    _ask_all(engine, [pa.table({"x": [0]})] + [pa.table({"x": list(range(3000))})] * 2)
    assert engine.sent == [1, 3000, 3000]
