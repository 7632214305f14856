"""The assay runner's transactional outbox (shared/outbox.py, which says how rows are sent, held and retried):
events of committed changes are rows of `outbox` (migration 003), written in the change's own transaction
(store.record_results, handlers.create), and published from there. An assay's events go out in order (the order
key is the payload's `assay_id`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from services.assay_runner import store
from shared import outbox, subjects
from shared.messages.assays import AssayThresholdCrossed, AssayWasCreated
from shared.messages.base import Event
from shared.outbox import BATCH, RETRY, row_refused  # noqa: F401 - the assay runner's names for them

EVENT_TYPES: dict[str, type[Event]] = {
    subjects.EVENT_ASSAY_CREATED: AssayWasCreated,
    subjects.EVENT_ASSAY_WARNING: AssayThresholdCrossed,
    subjects.EVENT_ASSAY_ALERT: AssayThresholdCrossed,
}


class Outbox(outbox.Outbox):
    def __init__(self, pool: asyncpg.Pool, publish: Callable[[str, Any], Awaitable[None]],
                 retry: float = RETRY) -> None:
        # the table's functions are looked up in the assay runner's store (which re-exports shared/outbox's)
        super().__init__(pool, publish, event_types=EVENT_TYPES, order_field="assay_id", what="assay events",
                         retry=retry, rows=store)
