"""add_input_task / add_output_task naming the task run the link is made for: an arrow from a run to itself
(200 before, drawn as a loop on the run's card), now a 400 before anything is read or written (the connection is
never touched: None here)."""

from __future__ import annotations

import pytest

from services.workflow_lineage.links import _target
from shared.errors import InvalidRequest
from shared.messages.lineage import TaskLink


@pytest.mark.parametrize("direction", ["input", "output"])
async def test_a_task_run_is_not_its_own_input_or_output(direction):
    own = TaskLink(workspace_id=1, task_id="run-1", **{f"{direction}_task_id": "run-1"})
    with pytest.raises(InvalidRequest) as refused:
        await _target(None, direction, "task", own)
    assert refused.value.msg.startswith(f"{direction}_task_id 'run-1' is the task run the link is made for")
    other = TaskLink(workspace_id=1, task_id="run-1", **{f"{direction}_task_id": "run-0"})
    assert (await _target(None, direction, "task", other))[0][:2] == ("task_run", "run-0")
