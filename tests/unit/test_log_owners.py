"""The log store's check of a batch's header against the deployer's announcements (handlers.Ingestor.check_owners)
and the bounded cache of those announcements (deployments.Deployments), without a stack; the real path is
tests/integration/test_log_owners.py."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from services.log_store import handlers
from services.log_store.deployments import Deployments, Owner
from services.log_store.handlers import UNKNOWN_RETRY, UNKNOWN_WAIT, Batch, Ingestor
from shared.settings import LogSettings


class Msg:
    def __init__(self, deployment: str, age: float = 0.0, seq: int | None = None, delivered: int = 1,
                 data: bytes = b"") -> None:
        self.subject = f"logs.inference.{deployment}"
        self.data = data
        self.metadata = SimpleNamespace(timestamp=datetime.fromtimestamp(time.time() - age, UTC),
                                        num_delivered=delivered)
        if seq is not None:  # a redelivery has its first delivery's stream sequence
            self.metadata.sequence = SimpleNamespace(stream=seq)
        self.naks: list[float | None] = []

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)


class Known:
    """Announcements: a deployment's workspace (its pipeline's name not announced), or its Owner."""

    def __init__(self, owners: dict[str, int | Owner], fail: bool = False) -> None:
        self.owners, self.fail, self.asked = owners, fail, []
        self.caught_up = time.time()  # every announcement read

    async def lookup(self, names: list[str]) -> dict[str, Owner]:
        self.asked.append(list(names))
        if self.fail:
            raise OSError("the database is away")
        return {n: o if isinstance(o := self.owners[n], Owner) else Owner(o, None) for n in names if n in self.owners}


def ingestor(known: Known) -> tuple[Ingestor, list[tuple[Msg, str]]]:
    ing = Ingestor(SimpleNamespace(settings=None), js=None, deployments=known)  # type: ignore[arg-type]
    quarantined: list[tuple[Msg, str]] = []

    async def quarantine(msg, reason: str) -> None:
        quarantined.append((msg, reason))

    ing.quarantine = quarantine  # type: ignore[method-assign]
    return ing, quarantined


def batch(subject_deployment: str, workspace_id: int, header_deployment: str | None = None, age: float = 0.0) -> Batch:
    return Batch(Msg(subject_deployment, age), "b", workspace_id, "p", None,
                 deployment=subject_deployment if header_deployment is None else header_deployment)


def test_a_batch_agreeing_with_its_deployment_s_announcement_is_kept():
    ing, quarantined = ingestor(Known({"d-1": 7}))
    good = batch("d-1", 7)
    kept, held = asyncio.run(ing.check_owners([good]))
    assert kept == [good] and held == set() and quarantined == []


def test_another_workspace_or_another_deployment_than_the_subject_s_is_quarantined_saying_why():
    ing, quarantined = ingestor(Known({"d-1": 7, "d-2": 8}))
    other_workspace, other_deployment, good = batch("d-1", 8), batch("d-1", 7, header_deployment="d-2"), batch("d-2", 8)
    kept, held = asyncio.run(ing.check_owners([other_workspace, other_deployment, good]))
    assert kept == [good] and held == set()
    reasons = {id(m): r for m, r in quarantined}
    assert "belongs to workspace 7, not to workspace 8" in reasons[id(other_workspace.msg)]
    assert "its subject names deployment 'd-1', its Railyard-Log header deployment 'd-2'" in \
        reasons[id(other_deployment.msg)]


def test_a_batch_naming_another_pipeline_than_its_deployment_s_is_quarantined_saying_why():
    """The announcement names the deployment's pipeline (since 2026-12-04): a replica of pipeline `a` whose header
    names pipeline `b` of the same workspace is quarantined; on the old code only the workspace was checked, and its
    records went to `b`'s log. A deployment announced without its pipeline's name (an older deployer) is checked by
    workspace only."""
    ing, quarantined = ingestor(Known({"d-1": Owner(7, "a"), "d-2": 7}))
    other, good, unnamed = batch("d-1", 7), batch("d-1", 7), batch("d-2", 7)
    other.pipeline, good.pipeline = "b", "a"
    kept, held = asyncio.run(ing.check_owners([other, good, unnamed]))
    assert kept == [good, unnamed] and held == set()
    assert [m for m, _ in quarantined] == [other.msg]
    assert "deployment 'd-1' belongs to pipeline 'a', not to pipeline 'b'" in quarantined[0][1]


def test_a_batch_without_a_deployment_in_its_header_is_quarantined():
    ing, quarantined = ingestor(Known({"d-1": 7}))
    headless = Batch(Msg("d-1"), "b", 7, "p", None, deployment=None)
    kept, _ = asyncio.run(ing.check_owners([headless]))
    assert kept == [] and len(quarantined) == 1


def test_a_deployment_not_announced_yet_is_held_then_quarantined_once_it_waited_too_long():
    ing, quarantined = ingestor(Known({}))
    fresh, old = batch("d-9", 7), batch("d-9", 7, age=UNKNOWN_WAIT + 1)
    kept, held = asyncio.run(ing.check_owners([fresh, old]))
    assert kept == [] and held == {id(fresh.msg)}
    assert fresh.msg.naks == [UNKNOWN_RETRY]  # comes back soon, never acknowledged
    assert [m for m, _ in quarantined] == [old.msg] and "was not announced" in quarantined[0][1]


def test_an_old_batch_is_not_quarantined_while_the_announcements_made_since_are_not_all_read():
    """A log store back after a long stop: its consumer of announcements has not read the backlog yet (caught_up
    before the batch's hour passed), so an old batch of a deployment it does not know yet waits."""
    known = Known({})
    ing, quarantined = ingestor(known)
    old = batch("d-9", 7, age=UNKNOWN_WAIT + 60)
    known.caught_up = time.time() - 120  # caught up last before this start's backlog
    kept, held = asyncio.run(ing.check_owners([old]))
    assert quarantined == [] and held == {id(old.msg)}
    known.caught_up = time.time()
    kept, held = asyncio.run(ing.check_owners([batch("d-9", 7, age=UNKNOWN_WAIT + 60)]))
    assert len(quarantined) == 1 and held == set()


def test_a_held_batch_comes_back_less_and_less_often():
    """A batch held for an hour came back every 2 s (1,800 parses and lookups); now 2, 4, 8 ... at most 60 s."""
    ing, _ = ingestor(Known({}))
    delays = []
    for delivered in (1, 2, 3, 5, 6, 500):
        held = Batch(Msg("d-9", seq=1, delivered=delivered), "b", 7, "p", None, deployment="d-9")
        asyncio.run(ing.check_owners([held]))
        delays += held.msg.naks
    assert delays == [UNKNOWN_RETRY, 2 * UNKNOWN_RETRY, 4 * UNKNOWN_RETRY, 16 * UNKNOWN_RETRY,
                      handlers.UNKNOWN_RETRY_MAX, handlers.UNKNOWN_RETRY_MAX]


def test_a_held_batch_comes_back_after_the_log_stores_unknown_retry():
    """logs.unknown_retry (RAILYARD_LOGS__UNKNOWN_RETRY) is the first delay, doubling from there; its default is
    UNKNOWN_RETRY, 2 s as before the setting (the test stack's 0.5 s is the test stack's only); 0, a negative, NaN or
    more than a minute is refused at the start."""
    assert LogSettings().unknown_retry == UNKNOWN_RETRY == 2.0
    ing, _ = ingestor(Known({}))
    ing.deps = SimpleNamespace(settings=LogSettings(unknown_retry=0.5))
    delays = []
    for delivered in (1, 2, 3, 5):
        held = Batch(Msg("d-9", seq=1, delivered=delivered), "b", 7, "p", None, deployment="d-9")
        asyncio.run(ing.check_owners([held]))
        delays += held.msg.naks
    assert delays == [0.5, 1.0, 2.0, 8.0]
    for bad in (0, -1, float("nan"), 61):
        with pytest.raises(ValueError):
            LogSettings(unknown_retry=bad)


def test_at_most_hold_max_batches_are_held_and_one_more_is_quarantined_at_once(monkeypatch):
    """Held batches count in the consumer's max_ack_pending: at 50,000 the server sent no other batch, so a busy
    deployment not announced (one announced before EVENTS' age cap, at an upgrade) stopped everyone's logs within
    the hour. Now past HOLD_MAX one more is quarantined at once; a redelivery of one held is held again, and one
    stored frees its place."""
    monkeypatch.setattr(handlers, "HOLD_MAX", 2)
    known = Known({})
    ing, quarantined = ingestor(known)

    def unknown(seq: int, deployment: str = "d-9") -> Batch:
        return Batch(Msg(deployment, seq=seq), "b", 7, "p", None, deployment=deployment)

    first, second, third = unknown(1), unknown(2), unknown(3)
    kept, held = asyncio.run(ing.check_owners([first, second, third]))
    assert held == {id(first.msg), id(second.msg)} and [m for m, _ in quarantined] == [third.msg]
    assert "2 batches (0 bytes) already wait for announcements" in quarantined[0][1]
    again = unknown(1)  # the first, back
    kept, held = asyncio.run(ing.check_owners([again]))
    assert held == {id(again.msg)} and len(quarantined) == 1
    known.owners["d-8"] = 7
    stored, fourth = unknown(2, "d-8"), unknown(4)  # the second's deployment announced (a test's liberty: same seq)
    kept, held = asyncio.run(ing.check_owners([stored, fourth]))
    assert kept == [stored] and held == {id(fourth.msg)} and len(quarantined) == 1


def test_batches_held_take_at_most_a_quarter_of_the_bytes_the_stream_may_hold():
    """A full INFERENCE_LOGS refuses every engine's batches: 10,000 held of 1 MiB would pass its 8 GiB."""
    ing, quarantined = ingestor(Known({}))
    ing.deps = SimpleNamespace(settings=SimpleNamespace(stream_max_bytes=1000))  # a quarter: 250 bytes
    first, second, third = (Batch(Msg("d-9", seq=seq, data=b"x" * 150), "b", 7, "p", None, deployment="d-9")
                            for seq in (1, 2, 3))
    kept, held = asyncio.run(ing.check_owners([first, second, third]))
    assert held == {id(first.msg), id(second.msg)} and [m for m, _ in quarantined] == [third.msg]
    assert "2 batches (300 bytes) already wait" in quarantined[0][1]
    again = Batch(Msg("d-9", seq=1, data=b"x" * 150), "b", 7, "p", None, deployment="d-9")  # the first, back
    kept, held = asyncio.run(ing.check_owners([again]))
    assert held == {id(again.msg)} and len(quarantined) == 1 and ing.holding_bytes == 300


def test_at_a_start_ingestion_waits_for_the_announcements_to_be_read():
    """A log store back from a stop: the batches of deployments announced meanwhile were fetched (and past the
    hold's bounds quarantined) before the announcements consumer had read EVENTS' backlog."""
    async def scenario() -> None:
        known = Known({})
        waiting = asyncio.Event()

        class Ready(asyncio.Event):
            async def wait(self) -> bool:
                waiting.set()
                return await super().wait()

        known.ready = Ready()
        ing = Ingestor(SimpleNamespace(settings=SimpleNamespace(flush_interval=0.05, segment_max_bytes=1 << 20)),
                       js=None, deployments=known)  # type: ignore[arg-type]
        fetched: list[float] = []

        class Sub:
            async def fetch(self, batch: int, timeout: float):
                fetched.append(time.monotonic())
                await asyncio.sleep(timeout)
                raise TimeoutError

        ing.sub = Sub()
        task = asyncio.create_task(ing.run())
        # until the loop waits for the announcements (a fixed sleep could end before it fetched on a slow host)
        await asyncio.wait_for(waiting.wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert fetched == []
        known.ready.set()
        for _ in range(100):
            if fetched:
                break
            await asyncio.sleep(0.01)
        assert fetched
        # stopped as the app stops it (its idle fetch cancelled): running set false alone left the loop in its
        # idle fetch, which this Sub ends after IDLE_FETCH (5 s), the wait below's own bound: the test failed when
        # the fetch started a moment before the wait did (a loaded machine)
        await ing.stop()
        await asyncio.wait_for(task, 5.0)

    asyncio.run(scenario())


def test_a_lookup_that_fails_raises_so_nothing_is_acknowledged_nor_quarantined():
    ing, quarantined = ingestor(Known({"d-1": 7}, fail=True))
    good = batch("d-1", 7)
    with pytest.raises(OSError):
        asyncio.run(ing.check_owners([good]))
    assert quarantined == [] and good.msg.naks == []


def test_a_flush_acknowledges_none_of_the_batches_it_holds(monkeypatch):
    """flush acks every message it took, but not those held for an announcement."""
    acked: list[object] = []

    async def ack(msg) -> None:
        acked.append(msg)

    monkeypatch.setattr(handlers, "_ack", ack)
    monkeypatch.setattr(handlers, "parse_batch", lambda msg, probe=False: Batch(msg, str(id(msg)), 7, "p", None,
                                                                              deployment=msg.subject.rsplit(".")[-1]))

    async def nothing_committed(pool, ids):
        return set()

    monkeypatch.setattr(handlers.store, "committed_batches", nothing_committed)
    monkeypatch.setattr(handlers.store, "commit_segments", lambda *a, **k: asyncio.sleep(0))
    ing, _ = ingestor(Known({"d-1": 7}))
    ing.deps = SimpleNamespace(pool=None, orphan_sweep=handlers.OrphanSweep(), settings=None)
    known, unknown = Msg("d-1"), Msg("d-2")
    known.headers = unknown.headers = {}
    asyncio.run(ing.flush([known, unknown]))
    assert acked == [known] and unknown.naks == [UNKNOWN_RETRY]


class Pool:
    def __init__(self, rows: dict[str, int]) -> None:
        self.rows, self.queries = rows, 0

    async def fetch(self, sql: str, names: list[str]):
        self.queries += 1
        return [{"name": n, "workspace_id": self.rows[n], "pipeline_name": "p"} for n in names if n in self.rows]


def test_an_answer_read_while_an_announcement_filled_in_the_pipeline_name_is_not_cached():
    """A lookup whose query read a deployment's row before a later announcement filled in its pipeline's name
    (b82176f: the deployer's serving event after an upgrade), and came back after `record` dropped the name from the
    cache: on b82176f's code that answer (no pipeline) was cached and stood until evicted, which a deployment that
    logs never is, so its batches stayed checked by workspace only. Now it is asked again next time."""
    from shared.messages.deployer import PipelineServing

    class Racing:
        """deployments.d-3 as PostgreSQL has it; the fill-in commits while the first lookup's answer is on its way."""

        def __init__(self) -> None:
            self.name: str | None = None
            self.queries = 0

        async def fetch(self, sql: str, names: list[str]):
            self.queries += 1
            row = {"name": "d-3", "workspace_id": 9, "pipeline_name": self.name}  # read now
            if self.queries == 1:
                await known.record(PipelineServing(deployment_id=3, name="d-3", pipeline_id=2, workspace_id=9,
                                                   pipeline_version="v", pipeline_name="p"))
            return [row]

        async def execute(self, sql: str, *args) -> None:
            assert "ON CONFLICT (name) DO UPDATE SET pipeline_name" in sql
            self.name = self.name or args[4]

    pool = Racing()
    known = Deployments(pool)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, None)}  # as read
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, "p")}
        assert pool.queries == 2
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, "p")} and pool.queries == 2  # cached now

    asyncio.run(scenario())


def test_announcements_are_cached_up_to_a_bound_and_unknown_names_asked_again():
    pool = Pool({"a": 1, "b": 2, "c": 3})
    known = Deployments(pool, cache_size=2)  # type: ignore[arg-type]
    assert asyncio.run(known.lookup(["a", "b", "x"])) == {"a": Owner(1, "p"), "b": Owner(2, "p")}
    assert pool.queries == 1
    assert asyncio.run(known.lookup(["a", "b"])) == {"a": Owner(1, "p"), "b": Owner(2, "p")}  # cached
    assert pool.queries == 1
    assert asyncio.run(known.lookup(["x"])) == {} and pool.queries == 2  # not known: asked again
    assert asyncio.run(known.lookup(["c"])) == {"c": Owner(3, "p")} and pool.queries == 3
    assert list(known.cache) == ["b", "c"]  # "a", least recently used, went


def test_an_announcement_with_a_field_this_log_store_does_not_know_is_read():
    """A deployer upgraded first may add a field to events.pipeline.deployed (events refuse unknown fields): the
    log store reads the fields it keeps, not skip the announcement (its deployment's batches would wait an hour)."""
    from services.log_store.deployments import announced

    event = announced(json.dumps({"event_id": "00000000-0000-0000-0000-000000000001", "deployment_id": 4,
                                  "name": "d-4", "pipeline_id": 2, "workspace_id": 9, "pipeline_version": "v",
                                  "occurred_at": "2026-12-04T11:00:00Z", "new_field": 1}).encode())
    assert (event.name, event.workspace_id, event.deployment_id, event.pipeline_name) == ("d-4", 9, 4, None)
    named = announced(json.dumps({"deployment_id": 4, "name": "d-4", "pipeline_id": 2, "workspace_id": 9,
                                  "pipeline_version": "v", "pipeline_name": "p"}).encode())
    assert named.pipeline_name == "p"
    with pytest.raises(ValueError):
        announced(b"[]")
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        announced(b'{"name": "d-4"}')


def test_an_announcement_not_recorded_keeps_the_consumer_from_being_caught_up_until_it_is():
    """PostgreSQL fails to record an announcement (not acked: it comes again after ack_wait). A fetch that times
    out meanwhile must not say every announcement was read: ingestion would start and judge old batches of that
    deployment (quarantined as unknown) before the announcement is recorded."""
    from services.log_store.deployments import Deployments as D

    class Ann:
        def __init__(self) -> None:
            self.data = json.dumps({"deployment_id": 4, "name": "d-4", "pipeline_id": 2, "workspace_id": 9,
                                    "pipeline_version": "v"}).encode()
            self.metadata = SimpleNamespace(num_pending=0, sequence=SimpleNamespace(stream=17))
            self.acked = False

        async def ack(self) -> None:
            self.acked = True

    async def scenario() -> None:
        known = D(pool=None)  # type: ignore[arg-type]
        fails = [True]

        async def record(event) -> None:
            if fails[0]:
                raise OSError("the database is away")

        known.record = record  # type: ignore[method-assign]
        deliveries = [[Ann()], TimeoutError, TimeoutError, "again", TimeoutError]
        fetched = asyncio.Event()
        before: list[tuple[float, bool]] = []

        class Sub:
            async def fetch(self, batch: int, timeout: float):
                await asyncio.sleep(0)
                step = deliveries.pop(0) if deliveries else TimeoutError
                if not deliveries:
                    fetched.set()
                if step == "again":  # ack_wait passed: redelivered, and PostgreSQL is back
                    fails[0] = False
                    return [Ann()]
                if step is TimeoutError:
                    if len(deliveries) >= 2:  # the timeouts before the redelivery
                        before.append((known.caught_up, known.ready.is_set()))
                    raise TimeoutError
                return step

        known.sub = Sub()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(asyncio, "sleep", _no_sleep)
            task = asyncio.ensure_future(known.run())
            await asyncio.wait_for(fetched.wait(), 5.0)
            for _ in range(100):
                if known.ready.is_set():
                    break
                await _no_sleep(0)
        known.running = False
        task.cancel()
        # the second timeout follows the first, after which the old code said caught up
        assert len(before) == 2 and before[1] == (0.0, False)
        assert known.ready.is_set() and known.caught_up > 0 and known.owed == set()

    asyncio.run(scenario())


_real_sleep = asyncio.sleep


async def _no_sleep(delay: float = 0, *a, **k) -> None:
    await _real_sleep(0)


class Announcement:
    """A message of the announcements consumer (nats-py's JetStream message, as far as deployments.py reads it)."""

    def __init__(self, data: bytes, seq: int = 17, headers: dict | None = None) -> None:
        self.data, self.headers, self.subject = data, headers, "events.pipeline.deployed"
        self.metadata = SimpleNamespace(num_pending=0, sequence=SimpleNamespace(stream=seq))
        self.acked = self.termed = False

    async def ack(self) -> None:
        self.acked = True

    async def term(self) -> None:
        self.termed = True


def _stream(first_seq: int) -> SimpleNamespace:
    async def stream_info(name: str):
        assert name == "EVENTS"
        return SimpleNamespace(state=SimpleNamespace(first_seq=first_seq))

    return SimpleNamespace(stream_info=stream_info)


async def _run_until_ready(known: Deployments, fetches: int = 20) -> bool:
    """Run the consumer over `fetches` fetches that find nothing; whether it said it was caught up."""
    done = asyncio.Event()
    count = [0]

    class Sub:
        async def fetch(self, batch: int, timeout: float):
            await _real_sleep(0)
            count[0] += 1
            if count[0] >= fetches:
                done.set()
            raise TimeoutError

    known.sub = Sub()
    task = asyncio.ensure_future(known.run())
    await asyncio.wait_for(done.wait(), 5.0)
    known.running = False
    task.cancel()
    return known.ready.is_set()


@pytest.mark.parametrize(("first_seq", "ready"), [(18, True), (17, False)], ids=["gone", "still-there"])
def test_an_owed_announcement_the_stream_no_longer_has_is_owed_no_more(first_seq, ready):
    """An announcement whose recording failed is owed until recorded; once EVENTS' retention took it (the stream's
    first sequence past it) no redelivery brings it, and on the old code the consumer never counted as caught up
    again (batches of deployments not announced were held until the hold filled). One still in the stream stays
    owed."""
    known = Deployments(pool=None)  # type: ignore[arg-type]
    known.js = _stream(first_seq)
    known.owed = {17}
    assert asyncio.run(_run_until_ready(known)) is ready
    assert known.owed == (set() if ready else {17})


def test_a_malformed_announcement_is_kept_as_a_dead_letter_and_terminated(monkeypatch):
    """On the old code it was logged and acknowledged: nothing an operator could list. Now it is a row of the log
    store's dead_letters (`railyard dead-letters list`); when that row cannot be written it is neither acknowledged
    nor terminated (it comes again) and is owed meanwhile."""
    from services.log_store import deployments

    kept: list[tuple[str, object, str]] = []
    fail = [False]

    async def record_dead_letter(pool, durable, msg, error) -> bool:
        if fail[0]:
            raise OSError("the database is away")
        kept.append((durable, msg, error))
        return True

    monkeypatch.setattr(deployments, "record_dead_letter", record_dead_letter)
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    known = Deployments(pool=None)  # type: ignore[arg-type]
    fail[0] = True
    first = Announcement(b'{"name": "d-4"}')
    assert asyncio.run(known.take(first)) is False
    assert not (first.acked or first.termed) and known.owed == {17} and kept == []
    fail[0] = False
    again = Announcement(b'{"name": "d-4"}')
    assert asyncio.run(known.take(again)) is True
    assert again.termed and not again.acked and known.owed == set()
    assert [(durable, msg) for durable, msg, _ in kept] == [(deployments.DURABLE, again)]
    assert "workspace_id" in kept[0][2]  # why: the fields, not the payload


def test_a_replay_of_another_consumer_s_dead_letter_is_acknowledged_unread():
    """`railyard dead-letters replay` publishes lineage's dead letter of an events.pipeline.deployed on its subject
    for lineage alone; the log store's consumer reads that subject too and must leave it (a malformed one would
    become a dead letter of the log store's too). One replayed for the log store is read."""
    from services.log_store import deployments
    from shared.dead_letters import REPLAY_FOR_HEADER

    recorded: list[str] = []
    known = Deployments(pool=None)  # type: ignore[arg-type]

    async def record(event) -> None:
        recorded.append(event.name)

    known.record = record  # type: ignore[method-assign]
    body = json.dumps({"deployment_id": 4, "name": "d-4", "pipeline_id": 2, "workspace_id": 9,
                       "pipeline_version": "v"}).encode()
    other = Announcement(body, headers={REPLAY_FOR_HEADER: "workflow-lineage-events"})
    assert asyncio.run(known.take(other)) is True and other.acked and recorded == []
    mine = Announcement(body, headers={REPLAY_FOR_HEADER: deployments.DURABLE})
    assert asyncio.run(known.take(mine)) is True and mine.acked and recorded == ["d-4"]
