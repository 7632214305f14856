"""Every NATS subject and JetStream stream name, in one place.

Commands: `<service>.<resource>.<verb>` (request/reply, one queue group per service).
Events: `events.<resource>.<past-tense-verb>` on the EVENTS stream.
"""

from __future__ import annotations

SERVICES: tuple[str, ...] = (
    "gateway",
    "auth",
    "registry",
    "deployer",
    "engine",
    "log_store",
    "assay_runner",
    "workflow_lineage",
    "task_scheduler",
    "monitoring",
)


def health(service: str) -> str:
    """The health subject of a service, e.g. `registry.health`."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return f"{service}.health"


def queue_group(service: str) -> str:
    """The queue group a service's replicas share."""
    return f"railyard-{service}"


# JetStream streams: name -> subjects it captures.
EVENTS_STREAM = "EVENTS"
EVENTS_SUBJECTS = ("events.>",)
INFERENCE_LOGS_STREAM = "INFERENCE_LOGS"
INFERENCE_LOGS_SUBJECTS = ("logs.inference.>",)
STREAMS: dict[str, tuple[str, ...]] = {
    EVENTS_STREAM: EVENTS_SUBJECTS,
    INFERENCE_LOGS_STREAM: INFERENCE_LOGS_SUBJECTS,
}

# Events
EVENT_SERVICE_STARTED = "events.service.started"

# workflow_lineage
LINEAGE_EVENTS_DURABLE = "workflow-lineage-events"
LINEAGE_EVENTS_COUNT = "workflow_lineage.events.count"
