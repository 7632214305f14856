"""Which workspace each deployment belongs to, as the deployer announced it, for ingestion to check log batches by.

Every engine replica connects to the bus as `engine` and fills a log batch's `Railyard-Log` header itself, so the
header alone does not say whose records they are: a compromised replica could log into another workspace. The
deployer's `events.pipeline.deployed` (written in the transaction that makes a deployment serve, published from its
outbox) says which workspace and pipeline (by id, and by name since 2026-12-04) a deployment (`<deploy_id>-<id>`)
belongs to, and its `events.pipeline.serving` says the same again at each start of the deployer for every deployment
it serves (a deployed event older than EVENTS' retention is gone from the stream: a log store upgraded or started on
an empty table learns those deployments there). The log store reads both with its own durable consumer
(`log-store-announcements` on EVENTS: a new durable, read from the stream's first event, not the older log store's
`log-store-deployments` with its filter changed, see `PREVIOUS_DURABLE`) into its `deployments` table, and ingestion
takes a batch only when the deployment its subject names is known there, in the workspace its header names, and of
the pipeline its header names when the announcement named it (handlers.Ingestor.check_owners; one announced by an
older deployer is checked by pipeline once the deployer names it again, which fills the name in). No token is needed
(the deployer's resolve query needs a member's or an inference token, which ingestion has none of) and the deployer
being down holds nothing up that it had announced.

A deployment not heard of yet (its event still in the deployer's outbox, the deployer away, this consumer behind)
is not refused: its batches stay unacknowledged and come back (`UNKNOWN_RETRY` seconds later) until the event is
read. One is quarantined as unknown only once this consumer has read every announcement the stream had
`UNKNOWN_WAIT` after the batch came (`caught_up`): after a long stop of the log store, old batches are not judged
before the announcements made meanwhile are read. Answers are cached (a name's workspace never changes: the name
ends in the deployment's unique id), at most `CACHE_SIZE` names, least recently used out first; names not known are
asked of PostgreSQL again each time.

An announcement that is not one (not JSON, a field missing) is kept in the log store's `dead_letters` (migration 009;
`railyard dead-letters list --service log_store`) and terminated; one that cannot be kept there comes again. An
announcement whose recording failed is owed (it comes again) until recorded, or until EVENTS no longer has it (its
retention took it meanwhile): then nothing would bring it again, and waiting for it kept the consumer from ever being
caught up.

Recording an announcement also sends `NOTIFY` on `CHANNEL` (the deployment's name), committed with the row: a log-store
process holding batches LISTENs on it (`listen`, on a connection of its own, open only while it holds batches: not one
of the pool's, whose few connections ingestion and reads need; with `postgres.pool_max` 1 a pool connection held for
the LISTEN stopped ingestion for good) and asks those of the deployment back at once, whichever process read the
announcement (a rolling update runs two). A notification lost (the connection dropped) is made up for by the holder's
own looks in the table (handlers.Ingestor.look_up_held, backing off), which start over whenever listening (re)starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
import nats.errors
from pydantic import ValidationError

from services.log_store.waits import IDLE_FETCH
from shared import db, subjects
from shared.consumers import describe, record_dead_letter
from shared.dead_letters import REPLAY_FOR_HEADER
from shared.messages.deployer import PipelineDeployed
from shared.service import DurableConsumer, set_up_durable_consumers

log = logging.getLogger("railyard.log_store")
DURABLE = "log-store-announcements"
# the durable of the log stores before events.pipeline.serving (filtered on events.pipeline.deployed alone). Not
# re-filtered: changing an existing consumer's filter does not take it back, and a filtered consumer's next sequence
# moves past the events of other subjects (to the stream's end at a fetch that finds nothing), so the serving events
# an upgraded deployer wrote while the older log store still ran would never have been read. Unused since; an operator
# may delete it (`nats consumer rm EVENTS log-store-deployments`, docs/logs.md "Upgrading"). A later change of the
# filter takes a new name too.
PREVIOUS_DURABLE = "log-store-deployments"
CACHE_SIZE = 4096
SUBJECTS = (subjects.EVENT_PIPELINE_DEPLOYED, subjects.EVENT_PIPELINE_SERVING)
CHANNEL = "log_store_deployment_recorded"  # NOTIFY'd with a deployment's name as its announcement is recorded
LISTEN_WAIT = 5.0  # seconds starting or ending the LISTEN may take (a server that stopped answering), then given up
LISTEN_RETRY = 5.0  # seconds after a failed start of the LISTEN before the next try
FETCH_WAIT = 1.0  # seconds a fetch waits while the stream is read (its backlog at a start, an announcement owed)
# IDLE_FETCH (waits.py): seconds a fetch waits, caught up and owing nothing, for one announcement


class Owner(NamedTuple):
    """Whose a deployment is, as the deployer announced it."""

    workspace_id: int
    pipeline: str | None  # its pipeline's name; None when announced by a deployer older than the field


def consumer_config() -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(name=DURABLE, durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                          deliver_policy=DeliverPolicy.ALL, ack_wait=30.0, max_deliver=-1,
                          filter_subjects=list(SUBJECTS))


def announced(data: bytes) -> PipelineDeployed:
    """The fields the log store keeps of an events.pipeline.deployed or .serving. Only those are read: events refuse
    unknown fields, and a deployer upgraded before the log store (a field added) must not make it skip the
    announcement."""
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return PipelineDeployed.model_validate({name: body.get(name) for name in (
        "deployment_id", "name", "pipeline_id", "workspace_id", "pipeline_version", "pipeline_name")})


async def _create_or_update(js: Any, consumer: DurableConsumer) -> None:
    await js.add_consumer(consumer.stream, config=consumer.config)


class Deployments:
    """The deployments the deployer announced (`lookup`), and the consumer that reads its announcements (`run`)."""

    def __init__(self, pool: asyncpg.Pool, cache_size: int = CACHE_SIZE,
                 connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None) -> None:
        self.pool = pool
        # opens the LISTEN's connection (`listen`), outside the pool; None: nothing is listened for (the held batches'
        # looks in the table alone, handlers.Ingestor.look_up_held)
        self.connect = connect
        self.cache_size = cache_size
        self.cache: OrderedDict[str, Owner] = OrderedDict()
        self.lookups = 0  # asked of PostgreSQL (names not in the cache)
        self.recorded = 0  # announcements recorded: a lookup's answer read while one was is not cached (`lookup`)
        # when (time.time()) a fetch began after which every announcement the stream had was recorded: announcements
        # published before it are all known. 0 until this process has read the stream's backlog (its start)
        self.caught_up = 0.0
        self.ready = asyncio.Event()  # set once caught up: ingestion judges no batch before (handlers.START_WAIT)
        # stream sequences of announcements whose recording failed: they come again (ack_wait), and until each is
        # recorded the stream's announcements are not all read, whatever a fetch that times out meanwhile says
        self.owed: set[Any] = set()
        self.task: asyncio.Task | None = None
        self.running = True
        # told each deployment whose announcement was recorded (handlers.Ingestor.announced: its held batches are
        # asked back at once)
        self.on_recorded: Callable[[str], None] = lambda name: None
        self.listener: asyncpg.Connection | None = None  # LISTENing on CHANNEL (`listen`)
        self.listen_failed_at: float | None = None

    async def lookup(self, names: list[str]) -> dict[str, Owner]:
        """Whose each named deployment known is (a name not in the answer is not known yet). Raises when PostgreSQL
        does not answer: the caller keeps its batches for later."""
        found: dict[str, Owner] = {}
        missing: list[str] = []
        for name in dict.fromkeys(names):
            owner = self.cache.get(name)
            if owner is None:
                missing.append(name)
            else:
                self.cache.move_to_end(name)
                found[name] = owner
        if missing:
            self.lookups += 1
            recorded = self.recorded
            rows = await self.pool.fetch("SELECT name, workspace_id, pipeline_name FROM deployments"
                                         " WHERE name = ANY($1::text[])", missing)
            # an announcement recorded meanwhile may have filled in a pipeline's name this answer was read without,
            # after `record` dropped the name from the cache: cached, the answer would stand until evicted (never, for
            # a deployment that logs), its batches checked by workspace only. Asked again next time instead.
            fresh = self.recorded == recorded
            for row in rows:
                found[row["name"]] = owner = Owner(row["workspace_id"], row["pipeline_name"])
                if fresh:
                    self._remember(row["name"], owner)
        return found

    def _remember(self, name: str, owner: Owner) -> None:
        self.cache[name] = owner
        self.cache.move_to_end(name)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    async def record(self, event: PipelineDeployed) -> None:
        """A deployment announced: kept (the first announcement of a name stands; later ones say the same), its
        pipeline's name filled in by a later one when an older deployer's left it out (migration 010)."""
        # one statement: the NOTIFY (CHANNEL, for the log-store processes holding its batches) goes out at its commit,
        # so a listener that hears it finds the row
        await self.pool.execute(
            "WITH kept AS (INSERT INTO deployments (name, deployment_id, workspace_id, pipeline_id, pipeline_name)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET pipeline_name = EXCLUDED.pipeline_name"
            " WHERE deployments.pipeline_name IS NULL AND EXCLUDED.pipeline_name IS NOT NULL)"
            " SELECT pg_notify($6, $1)",
            event.name, event.deployment_id, event.workspace_id, event.pipeline_id, event.pipeline_name, CHANNEL)
        self.recorded += 1
        self.cache.pop(event.name, None)  # cached without its pipeline's name, say
        self.on_recorded(event.name)

    async def listen(self, wanted: bool) -> bool:
        """While `wanted` (the caller holds batches for announcements), a connection of its own (`connect`) LISTENs on
        CHANNEL and tells `on_recorded` each deployment any log-store process records; not wanted, it is closed. A
        closed one is replaced; a failed start is tried again LISTEN_RETRY later. True when listening began now: what
        was recorded before was not heard, the caller looks it up. Not the pool's: held for as long as batches wait
        (up to an hour), it left ingestion, reads and the announcements' recording one connection fewer, and none
        with `postgres.pool_max` 1 (every flush waited for ever, the held batches with it)."""
        conn = self.listener
        if conn is not None and (not wanted or _closed(conn)):
            await self.unlisten()
            conn = None
        if not wanted or conn is not None or self.connect is None:
            return False
        now = time.monotonic()
        if self.listen_failed_at is not None and now - self.listen_failed_at < LISTEN_RETRY:
            return False
        try:
            self.listener = await db.within(LISTEN_WAIT, self._listening(),
                                            lambda: TimeoutError(f"no answer within {LISTEN_WAIT:.3g} s"))
        except Exception as exc:  # the looks in the table go on meanwhile (handlers.Ingestor.look_up_held)
            if self.listen_failed_at is None:
                log.warning("listening for recorded deployments failed (held batches are looked up instead): %s",
                            exc)
            self.listen_failed_at = now
            return False
        self.listen_failed_at = None
        return True

    async def _listening(self) -> asyncpg.Connection:
        assert self.connect is not None
        conn = await self.connect()
        try:
            await conn.add_listener(CHANNEL, self._heard)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _heard(self, conn: Any, pid: int, channel: str, name: str) -> None:
        self.on_recorded(name)

    async def unlisten(self) -> None:
        """The LISTEN's connection closed within LISTEN_WAIT, else terminated (the server drops the LISTEN with it)."""
        conn, self.listener = self.listener, None
        if conn is None:
            return
        try:
            await db.within(LISTEN_WAIT, conn.close(), lambda: TimeoutError("closing the LISTEN's connection"))
        except Exception as exc:  # noqa: BLE001 - the connection is gone either way
            log.debug("closing the LISTEN's connection: %s", exc)
            with contextlib.suppress(Exception):
                conn.terminate()

    async def start(self, js: Any, stop: asyncio.Event | None = None) -> None:
        self.js = js
        # created, or its settings updated (pull_subscribe leaves an existing durable as it is); never its filter
        # (PREVIOUS_DURABLE). Tried again while JetStream does not answer (shared.service.set_up_durable_consumers:
        # a late answer ended the start with "TimeoutError: nats: timeout"); nothing is started when `stop` came first
        consumer = DurableConsumer(subjects.EVENTS_STREAM, DURABLE, ",".join(SUBJECTS), consumer_config())
        if not await set_up_durable_consumers(js, [consumer], stop or asyncio.Event(), set_up=_create_or_update):
            return
        self.sub = await js.pull_subscribe_bind(durable=DURABLE, stream=subjects.EVENTS_STREAM)
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        self.running = False
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        # the loop has ended: its subscription goes, so the server drops a pull request still waiting there (the idle
        # fetch's, up to IDLE_FETCH), and an announcement published before app.py closes the connection waits for
        # another process's fetch instead of going to this one, never acknowledged (back only after ack_wait, 30 s)
        sub = getattr(self, "sub", None)
        if sub is not None:
            with contextlib.suppress(Exception):  # the connection closed or lost: its requests went with it
                await sub.unsubscribe()
        await self.unlisten()

    async def run(self) -> None:
        idle = False  # caught up at the last fetch, nothing owed: the next waits for one announcement (IDLE_FETCH)
        while self.running:
            began = time.time()
            try:
                if idle:
                    msgs = await self.sub.fetch(batch=1, timeout=IDLE_FETCH)
                else:
                    msgs = await self.sub.fetch(batch=64, timeout=FETCH_WAIT)
            except (TimeoutError, nats.errors.TimeoutError):  # nothing left to read
                if self.owed:
                    await self.forget_gone()
                idle = not self.owed
                if not self.owed:
                    self.caught_up = max(self.caught_up, began)
                    self.ready.set()
                continue
            except Exception as exc:  # bus trouble: unacknowledged events stay in the stream
                idle = False
                log.warning("fetching deployment announcements failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            recorded = [await self.take(msg) for msg in msgs]
            idle = False  # more may be waiting: fetched in batches until a fetch finds the stream read
            with contextlib.suppress(Exception):
                if all(recorded) and not self.owed and msgs[-1].metadata.num_pending == 0:
                    self.caught_up = max(self.caught_up, began)
                    self.ready.set()
                    idle = True

    async def forget_gone(self) -> None:
        """Owed announcements EVENTS no longer has (its age or size limit took them before they were recorded) are
        owed no more: no redelivery will bring them, and until forgotten the consumer never counted as caught up, so
        a deployment not announced had its batches held until the hold filled. Their deployments' batches are
        quarantined once they waited UNKNOWN_WAIT (handlers), as those of any deployment not announced."""
        try:
            first = (await self.js.stream_info(subjects.EVENTS_STREAM)).state.first_seq
        except Exception as exc:  # asked again at the next fetch that finds nothing
            log.warning("reading EVENTS' first sequence failed: %s", exc)
            return
        gone = {seq for seq in self.owed if isinstance(seq, int) and seq < first}
        if gone:
            log.error("deployment announcements %s were never recorded and EVENTS no longer has them (its retention):"
                      " their deployments are known again at the deployer's next start (events.pipeline.serving)",
                      sorted(gone)[:20])
            self.owed -= gone

    async def take(self, msg: Any) -> bool:
        """Record one announcement; False when it could not be (it comes again)."""
        seq = _stream_seq(msg)
        replay_for = (getattr(msg, "headers", None) or {}).get(REPLAY_FOR_HEADER)
        if replay_for is not None and replay_for != DURABLE:  # another consumer's dead letter, replayed for it alone
            await _ack(msg)
            return True
        try:
            event = announced(msg.data)
        except (ValueError, TypeError, RecursionError, ValidationError) as exc:  # no redelivery reads it either:
            # kept where an operator finds it; batches of its deployment wait, then are quarantined (UNKNOWN_WAIT)
            return await self.dead_letter(msg, seq, describe(exc))
        try:
            await self.record(event)
        except Exception as exc:  # PostgreSQL away: not acknowledged, so it comes again
            log.warning("recording deployment %s failed (it comes again): %s", event.name, exc)
            self.owed.add(seq)
            await asyncio.sleep(0.5)
            return False
        self.owed.discard(seq)
        await _ack(msg)
        return True

    async def dead_letter(self, msg: Any, seq: Any, error: str) -> bool:
        """Keep an announcement that is not one in `dead_letters` and terminate it; False when it could not be kept
        (not acknowledged: it comes again, owed meanwhile)."""
        try:
            kept = await record_dead_letter(self.pool, DURABLE, msg, error)
        except Exception as exc:
            log.warning("keeping a malformed deployment announcement as a dead letter failed (it comes again): %s",
                        exc)
            self.owed.add(seq)
            await asyncio.sleep(0.5)
            return False
        if kept:
            log.error("dead letter of %s: %s #%s: %s", DURABLE, msg.subject, seq, error)
        self.owed.discard(seq)
        try:
            await msg.term()
        except Exception as exc:  # redelivered: its row is there, so it is terminated then
            log.warning("terminating a malformed deployment announcement failed: %s", exc)
        return True


def _closed(conn: Any) -> bool:
    """Whether the LISTEN's connection is closed (the server or the network dropped it)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def _stream_seq(msg: Any) -> Any:
    """The announcement's stream sequence (a redelivery has its first delivery's), or the message itself."""
    try:
        return msg.metadata.sequence.stream
    except Exception:
        return id(msg)


async def _ack(msg: Any) -> None:
    try:
        await msg.ack()
    except Exception as exc:  # redelivered: recorded again, which changes nothing
        log.warning("acknowledging a deployment announcement failed: %s", exc)
