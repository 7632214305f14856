"""workflow_lineage: transport only. Subscribers parse their typed message and call one handler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig

from services.workflow_lineage import handlers
from shared import subjects
from shared.bus import CallContext, command
from shared.messages import CountEvents, EventCount
from shared.service import Runtime, ServiceSpec

NAME = "workflow_lineage"


def build_router(runtime: Runtime) -> NatsRouter:
    """Every domain event (durable pull consumer, acknowledged after it is stored) and the queries."""
    router = NatsRouter()

    @router.subscriber(
        "events.>",
        stream=JStream(subjects.EVENTS_STREAM, declare=False),
        durable=subjects.LINEAGE_EVENTS_DURABLE,
        pull_sub=PullSub(batch_size=64, timeout=1.0),
        # Messages handed to a replica that then dies are redelivered after ack_wait: keep it short,
        # recording is idempotent (by event id) so an early redelivery costs nothing.
        config=ConsumerConfig(ack_wait=5.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="events.>:Event",
        description="Record every domain event once, for the lineage graph.",
    )
    async def on_event(body: dict[str, Any], message: NatsMessage) -> None:
        await handlers.record_event(runtime.db, message.raw_message.subject, body)

    @command(router, subjects.LINEAGE_EVENTS_COUNT, service=NAME)
    async def count_events(cmd: CountEvents, ctx: CallContext) -> EventCount:
        """Count the recorded domain events."""
        return await handlers.count_events(runtime.db, cmd.subject)

    return router


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    uses_object_store=True,
)
