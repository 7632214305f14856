"""Concurrent inferences to one deployment cross the gateway -> engine hop together.

While a message to a deployment is on its way, the requests to it that reach the hop in the same turn of the
gateway's event loop (concurrent connections do) travel as one table in one bus message when their tables have
the same schema, up to `MAX_ROWS` rows; the answer is split back by rows. So the bus and the engine pay per
batch, not per request, and the engine's own batching (services/engine/batching.py) runs the rest together. A
request with nothing else on its way to the deployment goes at once, as before: nothing waits for company. When
a shared request fails (one request's bad rows fail the whole table), each of its requests is sent again alone,
so the error reaches only the request that caused it. The engine logs the shared table's rows as one record:
every row is still logged once.

Requests travel together when their schemas are equal and carry the same schema metadata: a shared table carries
one metadata (the first table's), and the engine reads one key of it, the pipeline version a table was typed for
(`railyard.narrowed_for`, RouteCache.narrowed), so a table typed for an older version never rides in an unmarked
one past the replica's `stale_route` check. `pa.Schema ==` ignores metadata; its hash does not, which kept such
tables apart but for a hash collision; the key says it (`_key`). Field metadata, which `==` and the hash both ignore,
does not part requests: nothing reads it (the fast lane leaves such a table to the general path, the model call
takes values, the log's columns are built without it, the answer's `in` is each request's own table), and neither
do dictionary columns' different dictionaries (one type; each chunk is decoded with its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyarrow as pa

from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.bus import raise_for_error_header

MAX_ROWS = 4096


def _key(schema: pa.Schema) -> tuple:
    """Which requests may share a table: an equal schema with the same schema metadata (the module docstring)."""
    metadata = schema.metadata
    return schema, tuple(sorted(metadata.items())) if metadata else None


@dataclass
class Waiting:
    table: pa.Table
    future: asyncio.Future


@dataclass
class Coalescer:
    """`send(deployment, payload) -> (headers, answer bytes)` is the hop itself (one bus request)."""

    send: Callable[[str, bytes], Awaitable[tuple[dict[str, str], bytes]]]
    queues: dict[str, list[Waiting]] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)  # messages on their way, by deployment
    shared_requests: int = 0
    shared_messages: int = 0

    async def ask(self, deployment: str, table: pa.Table) -> tuple[dict[str, str], pa.Table]:
        """(the engine's answer headers, this request's output rows); a failed answer raises its typed error."""
        loop = asyncio.get_running_loop()
        if not self.inflight.get(deployment) and deployment not in self.queues:
            # nothing else on its way to this deployment (a client calling one request after another): go now
            self.inflight[deployment] = 1
            try:
                return await self._one(deployment, table)
            finally:
                self.inflight[deployment] -= 1
        queue = self.queues.setdefault(deployment, [])
        waiting = Waiting(table, loop.create_future())
        queue.append(waiting)
        if len(queue) == 1:  # after the other requests this turn of the loop brings
            loop.call_soon(self._go, deployment)
        return await waiting.future

    async def _one(self, deployment: str, table: pa.Table) -> tuple[dict[str, str], pa.Table]:
        headers, data = await self.send(deployment, to_ipc_stream(table))
        raise_for_error_header(headers)
        return headers, from_ipc(data)

    def _go(self, deployment: str) -> None:
        queue = self.queues.pop(deployment, [])
        groups: dict[tuple, list[Waiting]] = {}
        for waiting in queue:
            groups.setdefault(_key(waiting.table.schema), []).append(waiting)
        for group in groups.values():
            chunk: list[Waiting] = []
            rows = 0
            for waiting in group:
                if chunk and rows + waiting.table.num_rows > MAX_ROWS:
                    asyncio.create_task(self._send(deployment, chunk))  # noqa: RUF006 - it settles its futures
                    chunk, rows = [], 0
                chunk.append(waiting)
                rows += waiting.table.num_rows
            asyncio.create_task(self._send(deployment, chunk))  # noqa: RUF006 - it settles its futures

    async def _alone(self, deployment: str, waiting: Waiting) -> None:
        try:
            result = await self._one(deployment, waiting.table)
        except BaseException as exc:  # noqa: BLE001 - handed to the request that waits for it
            if not waiting.future.done():
                waiting.future.set_exception(exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(result)

    async def _send(self, deployment: str, chunk: list[Waiting]) -> None:
        self.inflight[deployment] = self.inflight.get(deployment, 0) + 1
        try:
            await self._send_chunk(deployment, chunk)
        finally:
            self.inflight[deployment] -= 1

    async def _send_chunk(self, deployment: str, chunk: list[Waiting]) -> None:
        if len(chunk) == 1:
            await self._alone(deployment, chunk[0])
            return
        try:
            headers, data = await self.send(deployment, to_ipc_stream(pa.concat_tables([w.table for w in chunk])))
            raise_for_error_header(headers)
            outputs = from_ipc(data)
            if outputs.num_rows != sum(w.table.num_rows for w in chunk):
                raise ValueError("the answer's rows do not match the requests'")
        except BaseException:  # noqa: BLE001 - each request alone gets its own answer (or error)
            await asyncio.gather(*(self._alone(deployment, w) for w in chunk))
            return
        self.shared_messages += 1
        self.shared_requests += len(chunk)
        offset = 0
        for waiting in chunk:
            if not waiting.future.done():
                waiting.future.set_result((headers, outputs.slice(offset, waiting.table.num_rows)))
            offset += waiting.table.num_rows
