"""Monitoring's memory-heavy work runs a few at once although its commands run 8 at once (nats.command_workers):
an image's decode and measures (monitor, predict; ~130 MiB at 16 MP) under `image_slots`, a get_stats over stored
predictions under `stats_slots` (monitoring.images_at_once / stats_at_once, 2 by default). The heavy calls are
stand-ins that count how many run together; everything around them is faked."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

from services.monitoring import predictions, reference
from services.monitoring.handlers import MonitoringDeps
from shared.messages.monitoring_feedback import GetStats
from shared.settings import Settings

CALLS = 6
USER = SimpleNamespace(user_id="u")  # the caller: a datalake file it writes is staged under its id


class Overlap:
    """How many calls are between enter() and leave() at once, at most (threads included)."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.02)  # long enough for every other call to arrive while this one is inside

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _deps() -> MonitoringDeps:
    return MonitoringDeps(pool=None, broker=None, membership=lambda token: None, timeout=1.0, deploy_timeout=1.0)


def test_the_default_is_two_of_each():
    deps, settings = _deps(), Settings().monitoring
    assert deps.image_slots._value == deps.stats_slots._value == 2
    assert settings.images_at_once == settings.stats_at_once == 2


def test_monitor_decodes_and_measures_two_images_at_once(monkeypatch):
    overlap = Overlap()

    def decode(data, content_type):
        overlap.enter()
        return SimpleNamespace(height=8, width=8)

    def measure(img):
        overlap.leave()
        return {"height": 8.0}

    monkeypatch.setattr(predictions, "images", SimpleNamespace(
        decode_image=decode, image_features=measure, content_type_of=lambda img: "image/png"))
    route = SimpleNamespace(deployment_id=1, workspace_id=1, pipeline_version="1", name="d-1")

    async def view(deps, principal, token, name):
        return SimpleNamespace(route=route, definition={"steps": []})

    async def labels(deps, token, view):
        return None, None

    async def settings(pool, deployment_id):
        return None

    async def keep(deps, token, row, data, deployment, labels, datalake, *, owner):
        return row

    monkeypatch.setattr(predictions, "_deployment", view)
    monkeypatch.setattr(predictions, "model_labels", labels)
    monkeypatch.setattr(predictions, "_check_monitored", lambda cmd, img, labels, expected: "classification")
    monkeypatch.setattr(predictions, "store", SimpleNamespace(settings=settings))
    monkeypatch.setattr(predictions, "_keep", keep)
    cmd = SimpleNamespace(tags=[], timestamp=None, deployment="d-1", content_type="image/png", source=None,
                          prediction=SimpleNamespace(model_dump=lambda **kw: {}), shadow_prediction=None,
                          latency=None, shadow_latency=None, filename=None, model_version=None)

    async def scenario() -> list:
        deps = _deps()
        return await asyncio.gather(*(predictions._monitor(deps, USER, None, cmd, b"png") for _ in range(CALLS)))

    rows = asyncio.run(scenario())
    assert len(rows) == CALLS and all(row.height == 8 and row.content_type == "image/png" for row in rows)
    assert overlap.most == 2, overlap.most


def test_get_stats_computes_two_at_once(monkeypatch):
    """Every get_stats value but the hourly aggregates and PREDICTIONS_DATA (a count and the newest 1,000) reads
    the matching predictions' columns into memory (stats_columns.compute): two at once."""
    overlap = Overlap()
    route = SimpleNamespace(deployment_id=1, workspace_id=1, name="d-1")

    async def view(deps, principal, token, name):
        return SimpleNamespace(route=route)

    async def no_reference(pool, deployment_id):
        return None

    async def compute(pool, service, deployment_id, reference, *, max_rows, **filters):
        await asyncio.to_thread(overlap.enter)
        overlap.leave()
        return 1, {"n": 1}

    monkeypatch.setattr(reference, "_view", view)
    monkeypatch.setattr(reference, "fs", SimpleNamespace(reference_row=no_reference))
    monkeypatch.setattr(reference.stats_columns, "compute", compute)

    async def scenario() -> list:
        deps = SimpleNamespace(monitoring=_deps())
        cmd = GetStats(deployment="d-1", service="PREDICTIONS_OUTLYING_SCORE")
        return await asyncio.gather(*(reference.get_stats(deps, None, None, cmd) for _ in range(CALLS)))

    answers = asyncio.run(scenario())
    assert [a.stats for a in answers] == [{"n": 1}] * CALLS
    assert overlap.most == 2, overlap.most


def test_no_image_slot_is_held_while_the_ml_backend_is_resolved(monkeypatch):
    """The ML backend's labeling (a registry request, artifact range reads) is resolved before an image slot is
    taken, by predict and monitor alike: with a registry that does not answer, every call reaches it, the slots free;
    before, two calls held both slots waiting for it and the others waited for them."""
    registry_answers, all_waiting = asyncio.Event(), asyncio.Event()
    waiting = []
    backend = SimpleNamespace(kind="classification", labels=["cat"])

    async def labeling(deps, token, workspace_id, champion):
        waiting.append(champion.name)
        if len(waiting) == CALLS:
            all_waiting.set()
        await registry_answers.wait()
        return backend

    monkeypatch.setattr(predictions.ml_backend_predictions, "labeling", labeling)
    monkeypatch.setattr(predictions.ml_backend_predictions, "task_json", lambda backend, data, content_type: "{}")
    monkeypatch.setattr(predictions, "images", SimpleNamespace(
        decode_image=lambda data, content_type: SimpleNamespace(height=8, width=8),
        image_features=lambda img: {"height": 8.0}, content_type_of=lambda img: "image/png"))
    route = SimpleNamespace(deployment_id=1, workspace_id=1, pipeline_version="1", name="d-1", status="Running")
    definition = {"steps": [{"ModelInference": {"models": [{"name": "backend", "version": "1"}]}}]}

    async def view(deps, principal, token, name):
        return SimpleNamespace(route=route, definition=definition)

    async def settings(pool, deployment_id):
        return None

    async def keep(deps, token, row, data, deployment, labels, datalake, *, owner):
        return row.kind, labels

    async def predicted(deps, token, cmd, view, data, tags, received, prepared, *, owner):
        return prepared.kind, prepared.labels

    monkeypatch.setattr(predictions, "_deployment", view)
    monkeypatch.setattr(predictions, "_check_monitored", lambda cmd, img, labels, expected: expected)
    monkeypatch.setattr(predictions, "store", SimpleNamespace(settings=settings))
    monkeypatch.setattr(predictions, "_keep", keep)
    monkeypatch.setattr(predictions, "_predict_prepared", predicted)
    monitored = SimpleNamespace(tags=[], timestamp=None, deployment="d-1", content_type="image/png", source=None,
                                prediction=SimpleNamespace(model_dump=lambda **kw: {}), shadow_prediction=None,
                                latency=None, shadow_latency=None, filename=None, model_version=None)
    asked = SimpleNamespace(tags=[], deployment="d-1", content_type="image/png")

    async def scenario() -> tuple[list, int]:
        deps = _deps()
        calls = [asyncio.create_task(predictions._monitor(deps, USER, None, monitored, b"png")) for _ in range(3)] + \
            [asyncio.create_task(predictions._predict(deps, USER, None, asked, b"png")) for _ in range(3)]
        await asyncio.wait_for(all_waiting.wait(), 2)  # with the slots held around it, only two ever got here
        free = deps.image_slots._value
        registry_answers.set()
        return await asyncio.gather(*calls), free

    answers, free = asyncio.run(scenario())
    assert free == 2
    assert answers == [("classification", ["cat"])] * CALLS
