"""For tests that publish inference log batches the way an engine replica does, for a deployment no deployer made:
the deployer's announcement of that deployment (events.pipeline.deployed), without which the log store keeps the
batches unacknowledged (services/log_store/deployments.py). Published as the test's `ops` identity."""

from __future__ import annotations

import uuid

from shared import subjects
from shared.messages.deployer import PipelineDeployed

_announced: set[tuple[str, int]] = set()


def fake_deployment(workspace_id: int, pipeline: str) -> str:
    """A deployment name of its own for a pipeline of a workspace (two workspaces' pipelines may share a name)."""
    return f"{pipeline}-w{workspace_id}-0"


async def announce(nc, workspace_id: int, deployment: str, pipeline_id: int = 0,
                   pipeline_name: str | None = None) -> None:
    """What the deployer publishes once a deployment serves: `deployment` belongs to `workspace_id` (and to the
    pipeline `pipeline_name`, when given; the log store checks the pipeline only then)."""
    if (deployment, workspace_id) in _announced:
        return
    event = PipelineDeployed(deployment_id=0, name=deployment, pipeline_id=pipeline_id, workspace_id=workspace_id,
                             pipeline_version=str(uuid.uuid4()), pipeline_name=pipeline_name)
    await nc.jetstream().publish(subjects.EVENT_PIPELINE_DEPLOYED, event.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": str(event.event_id)})
    _announced.add((deployment, workspace_id))
