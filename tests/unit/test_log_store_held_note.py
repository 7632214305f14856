"""A batch the log store holds for its deployment's announcement holds the consumer's ack floor, which the assay runner
reads to know the log complete: before, every assay's windows waited for it (up to max_log_wait each, then scored
`logs_complete: false`), whatever pipeline it was for. Now the log store notes in its consumer's metadata the sequence
up to which every other message is acknowledged and the pipeline each held batch names (`Ingestor.note_held`,
shared.bus.held_note), and a window waits only for batches held for its own pipeline (`LogWatermark.covers`). The
real servers' side: tests/integration/test_assay_held_batches.py."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest

from services.assay_runner import handlers as assays
from services.log_store.handlers import HELD_FRESH, Held, Ingestor, _consumer_seq
from shared import subjects
from shared.bus import HELD_NOTE, held_note, log_store_consumer_config, read_held_note
from shared.settings import LogSettings
from tests.local_nats import local_nats_server


def _at(seconds: float) -> datetime:
    return datetime(2026, 12, 4, 12, tzinfo=UTC) + timedelta(seconds=seconds)


def test_a_window_waits_only_for_batches_held_for_its_own_pipeline():
    mark = assays.LogWatermark()
    # sequence 11 is held for workspace 1's pipeline "p": the floor stays at 10 while 12..50 are stored
    progress = assays.log_progress(50, 10, 0, 1, held_note(50, {(1, "p"): 11}))
    mark.note(_at(10), progress, keep=600)
    assert not mark.covers(_at(5))  # the whole stream: not stored through 50
    assert mark.covers(_at(5), (1, "q"))  # another pipeline's window does not wait for p's batch
    assert mark.covers(_at(5), (2, "p"))  # nor does a pipeline of the same name in another workspace
    assert not mark.covers(_at(5), (1, "p"))  # p's window waits for it
    assert not mark.covers(_at(11), (1, "q"))  # a moment after the last mark: not known yet
    # without a note (an older log store, or another process's batches in flight): the floor, as before
    mark = assays.LogWatermark()
    mark.note(_at(10), assays.log_progress(50, 10, 0, 1), keep=600)
    assert not mark.covers(_at(5), (1, "q"))


def test_a_held_batch_of_the_window_s_pipeline_below_the_mark_holds_it_above_does_not():
    mark = assays.LogWatermark()
    mark.note(_at(1), assays.log_progress(20, 10, 5, 1), keep=600)  # published by 1 s: sequences up to 20
    mark.note(_at(10), assays.log_progress(50, 10, 0, 1, held_note(50, {(1, "p"): 30})), keep=600)
    assert mark.covers(_at(1), (1, "p"))  # p's held batch (30) came after the mark of 1 s (20)
    assert not mark.covers(_at(5), (1, "p"))


class Js:
    """The consumer as the log store asks for it: `unacknowledged` messages, the last delivery `delivered` (stream
    sequence) made as the consumer's `delivery`-th, the stream's first sequence `first`."""

    def __init__(self, unacknowledged: int, delivered: int, delivery: int = 30, first: int = 1) -> None:
        config = log_store_consumer_config()
        config.max_ack_pending, config.metadata = 1234, {"_nats.ver": "2.15.1", "operator": "kept"}
        self.info = SimpleNamespace(num_ack_pending=unacknowledged, config=config,
                                    delivered=SimpleNamespace(stream_seq=delivered, consumer_seq=delivery))
        self.stream = SimpleNamespace(state=SimpleNamespace(first_seq=first))
        self.configs: list = []

    async def consumer_info(self, stream: str, durable: str):
        return self.info

    async def stream_info(self, stream: str):
        return self.stream

    async def add_consumer(self, stream: str, config):
        self.configs.append(config)


def _delivered(*deliveries: int) -> list[SimpleNamespace]:
    """Messages as this process fetched them, each of its consumer sequence (its delivery)."""
    return [SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(consumer=d))) for d in deliveries]


def _ingestor(js: Js, deliveries: range | tuple = range(20, 31)) -> Ingestor:
    """An ingestor that received the deliveries given and holds batches 7 and 9 of workspace 1's "p" and 8 of
    workspace 2's "q" (delivered 21, 23, 22), and 3 of "r" not seen for HELD_FRESH."""
    ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
    ingestor.saw(_delivered(*deliveries))
    now = time.monotonic()
    ingestor.holding = {7: Held(now, 10, "dep-p", None, (1, "p"), 21), 9: Held(now, 10, "dep-p", None, (1, "p"), 23),
                        8: Held(now, 10, "dep-q", None, (2, "q"), 22),
                        # not seen for HELD_FRESH: stored by another process or gone, not counted (nor noted)
                        3: Held(now - HELD_FRESH - 1, 10, "dep-r", None, (3, "r"), 5)}
    return ingestor


def test_the_log_store_notes_its_held_batches_when_they_are_all_its_consumer_has_unacknowledged():
    async def scenario() -> None:
        js = Js(unacknowledged=3, delivered=40)
        ingestor = _ingestor(js)
        await ingestor.note_held()
        assert [c.metadata for c in js.configs] == [{"operator": "kept"} | held_note(40, {(1, "p"): 7, (2, "q"): 8})]
        assert js.configs[0].durable_name == "log-store" and js.configs[0].max_ack_pending == 1234  # as they were
        ingestor.noted_at = 0.0
        await ingestor.note_held()  # unchanged: not written again
        assert len(js.configs) == 1

        other = Js(unacknowledged=4, delivered=41)  # one more in flight (another process's): nothing noted
        ingestor = _ingestor(other)
        await ingestor.note_held()
        assert other.configs == []

    asyncio.run(scenario())


# the counts match (three unacknowledged, three held), but they are not the same three messages: a held batch was
# stored by another process (delivered to it after its nak's delay) or left the stream, and as many others are in
# flight. A note would say those stored (every message up to 40 but the held ones), and a window of their pipeline
# would be scored logs_complete true without their rows
NOT_THESE = {
    # the consumer's deliveries 31 and 32 went to another process (batch 9 back, stored there; one more in flight)
    "delivered_since_to_another_process": (lambda: Js(unacknowledged=3, delivered=40, delivery=32), range(20, 31)),
    # delivery 25 went to another process (held batch 7 back after its nak's delay, stored there), which has a
    # batch in flight: the counts match, and the consumer's last delivery is this process's
    "a_delivery_between_to_another_process": (lambda: Js(unacknowledged=3, delivered=40),
                                              (*range(20, 25), *range(26, 31))),
    # batch 7 left the stream at its age cap (the stream starts at 8); an older delivery is still unacknowledged
    "gone_at_the_age_cap": (lambda: Js(unacknowledged=3, delivered=40, first=8), range(20, 31)),
}


@pytest.mark.parametrize("case", NOT_THESE, ids=list(NOT_THESE))
def test_no_note_when_the_unacknowledged_messages_may_be_others_than_the_held_ones(case: str) -> None:
    async def scenario() -> None:
        make, deliveries = NOT_THESE[case]
        js = make()
        ingestor = _ingestor(js, deliveries)
        await ingestor.note_held()
        assert js.configs == [], "a note counted messages in flight elsewhere as stored"

    asyncio.run(scenario())


def test_deliveries_this_process_received_run_on_until_a_gap():
    ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None)
    ingestor.saw(_delivered(4, 5, 6))
    assert (ingestor.deliveries_from, ingestor.last_delivery) == (4, 6)
    ingestor.saw(_delivered(7, 9))  # 8 went to another process
    assert (ingestor.deliveries_from, ingestor.last_delivery) == (9, 9)
    ingestor.saw([SimpleNamespace()])  # a delivery of unknown sequence: no run until the next
    assert ingestor.deliveries_from is None
    ingestor.saw(_delivered(1))  # the consumer made again: its sequences start over
    assert (ingestor.deliveries_from, ingestor.last_delivery) == (1, 1)


@pytest.fixture
def jetstream_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


async def test_a_held_batch_stored_by_another_process_is_not_taken_for_the_batch_in_flight_there(jetstream_url: str):
    """Against a real nats-server: process A holds batch x of pipeline p (nak'd); x comes back to process B (the
    announcement came), which stores it, then fetches batch y of pipeline q and has it in flight. The consumer has
    one message unacknowledged, A holds one: before, A noted everything up to y stored but x, and q's windows were
    scored complete without y. Then a batch held alone by a process that got every delivery since is noted."""
    nc = await nats.connect(jetstream_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=subjects.INFERENCE_LOGS_STREAM, subjects=["logs.inference.>"])
        a = await js.pull_subscribe("logs.inference.>", durable=subjects.INFERENCE_LOGS_DURABLE,
                                    stream=subjects.INFERENCE_LOGS_STREAM, config=log_store_consumer_config())
        b = await js.pull_subscribe("logs.inference.>", durable=subjects.INFERENCE_LOGS_DURABLE,
                                    stream=subjects.INFERENCE_LOGS_STREAM)
        await js.publish("logs.inference.dep-p", b"x")
        await js.publish("logs.inference.dep-q", b"y")

        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
        [x] = await a.fetch(1, timeout=5)
        ingestor.saw([x])
        ingestor.holding[1] = Held(time.monotonic(), 1, "dep-p", x.reply, (1, "p"), _consumer_seq(x))
        await nc.request(x.reply, b"-NAK", timeout=5)  # held (a plain nak, answered once the server took it: back
        # at once, as a held batch after its delay)
        [again] = await b.fetch(1, timeout=5)
        assert again.data == b"x" and again.metadata.num_delivered == 2
        await again.ack_sync()  # B stored it
        [y] = await b.fetch(1, timeout=5)  # and has y in flight
        assert y.data == b"y"
        info = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        assert info.num_ack_pending == 1 and info.delivered.stream_seq == 2  # the counts A compares match
        await ingestor.note_held()
        info = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        assert HELD_NOTE not in (info.config.metadata or {}), "y, in flight at B, was noted as stored"
        await y.ack_sync()

        # a batch z held by A, which got every delivery since: noted
        await js.publish("logs.inference.dep-p", b"z")
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
        [z] = await a.fetch(1, timeout=5)
        ingestor.saw([z])
        ingestor.holding[3] = Held(time.monotonic(), 1, "dep-p", z.reply, (1, "p"), _consumer_seq(z))
        await z.nak(delay=30)
        await ingestor.note_held()
        info = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        assert read_held_note(info.config.metadata) == (3, {(1, "p"): 3})
    finally:
        await nc.close()
