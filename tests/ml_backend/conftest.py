"""Fixtures for the ML backend SDK: a real uvicorn server on 127.0.0.1 in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

REPO = Path(__file__).resolve().parents[2]

TEXT_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="Positive"/>
    <Choice value="Negative"/>
  </Choices>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until(condition, timeout: float = 30.0, every: float = 0.05):
    """Poll `condition` until it returns something truthy (then return it) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(every)


def annotation_event(task_id: int, text: str, label: str, project: int = 1, action: str = "ANNOTATION_CREATED",
                     annotation_id: int | None = None) -> dict:
    """A webhook body as Label Studio 1.23 sends it for one annotation."""
    return {
        "action": action,
        "project": {"id": project, "label_config": TEXT_CONFIG, "title": "p"},
        "task": {"id": task_id, "data": {"text": text}, "project": project},
        "annotation": {"id": annotation_id or 1000 + task_id, "task": task_id, "project": project,
                       "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                   "value": {"choices": [label]}}]},
    }


def versions(url: str, project: int | str = 1, **kwargs) -> dict:
    answer = httpx.get(f"{url}/versions", params={"project": project}, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return tmp_path / "models"
