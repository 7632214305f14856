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
from types import SimpleNamespace

from services.assay_runner import handlers as assays
from services.log_store.handlers import HELD_FRESH, Held, Ingestor
from shared.bus import held_note, log_store_consumer_config
from shared.settings import LogSettings


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
    def __init__(self, unacknowledged: int, delivered: int) -> None:
        config = log_store_consumer_config()
        config.max_ack_pending, config.metadata = 1234, {"_nats.ver": "2.15.1", "operator": "kept"}
        self.info = SimpleNamespace(num_ack_pending=unacknowledged, delivered=SimpleNamespace(stream_seq=delivered),
                                    config=config)
        self.configs: list = []

    async def consumer_info(self, stream: str, durable: str):
        return self.info

    async def add_consumer(self, stream: str, config):
        self.configs.append(config)


def _holding(ingestor: Ingestor) -> None:
    now = time.monotonic()
    ingestor.holding = {7: Held(now, 10, "dep-p", None, (1, "p")), 9: Held(now, 10, "dep-p", None, (1, "p")),
                        8: Held(now, 10, "dep-q", None, (2, "q")),
                        # not seen for HELD_FRESH: gone from the stream, not counted (nor noted)
                        3: Held(now - HELD_FRESH - 1, 10, "dep-r", None, (3, "r"))}


def test_the_log_store_notes_its_held_batches_when_they_are_all_its_consumer_has_unacknowledged():
    async def scenario() -> None:
        js = Js(unacknowledged=3, delivered=40)
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
        _holding(ingestor)
        await ingestor.note_held()
        assert [c.metadata for c in js.configs] == [{"operator": "kept"} | held_note(40, {(1, "p"): 7, (2, "q"): 8})]
        assert js.configs[0].durable_name == "log-store" and js.configs[0].max_ack_pending == 1234  # as they were
        ingestor.noted_at = 0.0
        await ingestor.note_held()  # unchanged: not written again
        assert len(js.configs) == 1

        other = Js(unacknowledged=4, delivered=41)  # one more in flight (another process's): nothing noted
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=other)
        _holding(ingestor)
        await ingestor.note_held()
        assert other.configs == []

    asyncio.run(scenario())
