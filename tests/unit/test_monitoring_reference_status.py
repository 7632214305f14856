"""The training reference's status calls read its small columns only, not the dataset's file list (up to 20,000
names with their labels: ~9.9 MB of JSON with 350-byte labels, ~75 ms a call on PostgreSQL before, 0.1 ms after)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from services.monitoring import reference
from shared.messages.monitoring import DeploymentQuery
from shared.messages.monitoring_feedback import TrainingDataStatus

STORED = {
    "deployment_id": 1, "workspace_id": 1, "dataset_id": 7, "version_id": 3, "status": "computing",
    "files": json.dumps([{"name": f"img-{i}.png", "sha256": f"{i:064x}", "labels": {"note": "x" * 350}}
                         for i in range(2_000)]),
    "images_done": 10, "images_total": 2_000, "error": None, "reference": None, "attempt": 2,
    "requested_at": datetime(2026, 12, 1, 19, 0, tzinfo=UTC), "computed_at": None,
}


class Table:
    """training_references with one row: answers the columns a SELECT names, and counts the bytes it sent."""

    def __init__(self) -> None:
        self.sent = 0

    async def fetchrow(self, sql: str, deployment_id: int) -> dict[str, Any] | None:
        names = re.match(r"SELECT (.+) FROM training_references WHERE deployment_id = \$1$", sql)
        assert names, sql
        columns = list(STORED) if names[1] == "*" else [c.strip() for c in names[1].split(",")]
        row = {c: STORED[c] for c in columns}
        self.sent += sum(len(v) for v in row.values() if isinstance(v, str))
        return row if deployment_id == STORED["deployment_id"] else None


def test_the_training_status_answers_the_same_without_reading_the_file_list(monkeypatch):
    table = Table()

    async def view(deps, principal, token, name):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=1, workspace_id=1, name=name))

    monkeypatch.setattr(reference, "_view", view)
    deps = SimpleNamespace(monitoring=SimpleNamespace(pool=table))
    answer = asyncio.run(reference.training_status(deps, None, None, DeploymentQuery(deployment="d-1")))
    assert answer == TrainingDataStatus(deployment="d-1", status="computing", dataset_id=7, version_id=3,
                                        images_done=10, images_total=2_000, error=None,
                                        requested_at=STORED["requested_at"], computed_at=None)
    assert table.sent < 100, table.sent  # before: the whole list, ~0.9 MB here


def test_the_background_computation_still_reads_the_file_list():
    row = asyncio.run(reference.fs.reference_row(Table(), 1, reference=False, files=True))
    assert row is not None and len(row["files"]) == 2_000 and "reference" not in row
