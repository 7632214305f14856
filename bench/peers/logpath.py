"""Before each Railyard figure of `make bench-peers`: wait (bounded) until its stack has stored every inference row
it was sent, and the order of Railyard's forms and models in a round.

Railyard logs every row of every request: a replica gathers them into a segment (`engine_segment_ms`), PUTs it to
SeaweedFS and publishes its description to INFERENCE_LOGS, and the log store indexes it in PostgreSQL and only then
acknowledges it. A form measured while the previous form's rows were still on that path paid for them; the busy-CPU
settle (harness.settle) reads the machine, not the path, and counts a process waiting for the disk as idle. Here the
path itself is read: every replica's `logs.held_rows` (records not yet published plus batches not yet acknowledged
by the stream, in `status/get_deployment`) and the log store's durable consumer's undelivered and unacknowledged
messages (nats-server's `/jsz` monitoring answer). Both at zero: every row sent so far is stored.

The systems' order alternates between rounds (harness.main); Railyard's forms and models, measured one after another
on one stack, follow the same rule: the harness's order in round 1, the reverse in round 2, so no form follows the
same one in both rounds (session 38: ccfraud's Arrow form followed the records form's batch-1000 load of the larger
answers in both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

STREAM = "INFERENCE_LOGS"  # shared.subjects.INFERENCE_LOGS_STREAM / _DURABLE (not imported: the bench reads the
DURABLE = "log-store"  # stack from outside, as a user would)


def consumer_backlog(jsz: dict[str, Any], stream: str = STREAM, durable: str = DURABLE) -> int | None:
    """The messages `durable` on `stream` has not had acknowledged (not yet delivered, or delivered and not yet
    acknowledged) in nats-server's `/jsz?accounts=true&streams=true&consumers=true` answer; None when the answer
    does not name that consumer (not made yet, another server's answer)."""
    found = None
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") != stream:
                continue
            for consumer in detail.get("consumer_detail") or []:
                if consumer.get("name") == durable:
                    found = (found or 0) + int(consumer.get("num_pending") or 0) + \
                        int(consumer.get("num_ack_pending") or 0)
    return found


def held_rows(status: dict[str, Any]) -> int | None:
    """The rows a deployment's replicas hold for the log (status/get_deployment's engines' `logs.held_rows`); None
    when a replica says no count (not running, or older than the count) or the deployment has no replica."""
    engines = status.get("engines") or []
    if not engines:
        return None
    total = 0
    for engine in engines:
        count = (engine.get("logs") or {}).get("held_rows")
        if count is None:
            return None
        total += int(count)
    return total


def backlog(statuses: Iterable[dict[str, Any]], jsz: dict[str, Any]) -> tuple[int | None, int | None]:
    """(rows the replicas hold, messages the log store has not acknowledged); a part not readable is None."""
    rows: int | None = 0
    for status in statuses:
        held = held_rows(status)
        rows = None if rows is None or held is None else rows + held
    return rows, consumer_backlog(jsz)


def idle(rows: int | None, messages: int | None) -> bool:
    """Whether the log path has stored everything: both parts read, both zero."""
    return rows == 0 and messages == 0


def wait_until(probe: Callable[[], bool], limit: float, poll: float = 0.1,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
               ) -> tuple[float, bool]:
    """Ask `probe` until it says True or `limit` seconds have passed: (seconds waited, whether it said True). A probe
    that raises counts as not yet (a status read refused while a replica is busy) until the limit."""
    started = clock()
    while True:
        try:
            if probe():
                return clock() - started, True
        except Exception:  # noqa: BLE001 - a failed read is "not idle yet"; the limit bounds it
            pass
        if clock() - started >= limit:
            return clock() - started, False
        sleep(poll)


def round_order(sequence: list[Any], round_index: int, alternate: bool = True) -> list[Any]:
    """A round's order of `sequence` (the harness's order of Railyard's measurements): as given in round 1 (index 0)
    and every odd-numbered round, reversed in the others when `alternate`, as the systems' order is."""
    return list(sequence) if not alternate or round_index % 2 == 0 else list(reversed(sequence))
