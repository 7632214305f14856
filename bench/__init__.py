"""Benchmarks: `make bench` (or `python -m bench`). Each prints its figures as ratios against a baseline
measured in the same run, and writes them to docs/benchmarks.md."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class BenchStack:
    """A fresh embedded stack with the admin logged in and one workspace holding one empty pipeline."""

    stack: Any
    token: str
    workspace: int
    pipeline_id: int
    folder: str


@contextmanager
def stack_with_pipeline(name: str) -> Iterator[BenchStack]:
    import tempfile
    from pathlib import Path

    from shared.client import RailyardClient
    from tests.stack import start_stack

    with tempfile.TemporaryDirectory(prefix=f"railyard-bench-{name}-") as folder:
        stack = start_stack(Path(folder) / "data")
        try:
            stack.wait_healthy()
            secrets = stack.secrets()
            client = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
            client.login(secrets["admin_username"], secrets["admin_password"])
            workspace = client.post("workspaces/create", {"workspace_name": name})["workspace_id"]
            pipeline = client.post("pipelines/create", {"pipeline_id": name, "workspace_id": workspace,
                                                        "definition": {}})
            yield BenchStack(stack, client.token, workspace, pipeline["pipeline_pk_id"], folder)
        finally:
            stack.stop()
