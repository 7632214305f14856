"""Assays over HTTP (seed section 9): every route, each bin mode, aggregation and metric checked against the
same arithmetic on the same values, scheduled windows firing on their own with alerts as events, a kill -9 of
the assay runner, bad inputs and outsiders. Log rows are published to the stream the way the engine does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import nats as nats_client
import numpy as np
import pyarrow as pa
import pytest

from services.assay_runner import compute
from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from tests.integration.conftest import Account, post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import wait_rows

pytestmark = pytest.mark.integration
HOUR = 3_600_000


async def publish_rows(stack, account: Account, pipeline: str, values: np.ndarray, at_ms: int | np.ndarray,
                       labels: bool = False) -> None:
    """Log rows as the engine publishes them, all at `at_ms` or each at its own time (an array)."""
    n = len(values)
    columns = {"time": pa.array(np.broadcast_to(np.asarray(at_ms, np.int64), n).copy()),
               "in.tensor": tensor_array(np.repeat(values[:, None], 3, axis=1).astype(np.float32)),
               "out.dense_1": tensor_array(values[:, None].astype(np.float64)),
               "metadata.last_model": pa.array([json.dumps({"model_name": "m1", "model_sha": "x"})] * n),
               "metadata.pipeline_version": pa.array(["v"] * n),
               "metadata.elapsed": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
               "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string()))}
    if labels:
        columns["out.label"] = pa.array([["a"]] * n, pa.list_(pa.string()))
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        batch = str(uuid.uuid4())
        deployment = fake_deployment(account.workspace_id, pipeline)
        await announce(nc, account.workspace_id, deployment)
        await nc.jetstream().publish(f"logs.inference.{deployment}", to_ipc_stream(pa.table(columns)), headers={
            MSG_ID: batch, BATCH_ID: batch, LOG_HEADER: log_header(account.workspace_id, pipeline, deployment, "v")})
    finally:
        await nc.close()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def config(account: Account, pipeline: dict, name: str, baseline: dict, window_start: str | None, width: str,
           summarizer: dict | None = None, **extra) -> dict:
    return {"name": name, "pipeline_id": pipeline["pipeline_pk_id"], "pipeline_name": pipeline["name"],
            "active": True, "status": "active", "iopath": "output dense_1 0", "baseline": baseline,
            "window": {"pipeline": pipeline["name"], "model": "m1", "width": width, "start": window_start,
                       "interval": None},
            "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                           "metric": "PSI", "num_bins": 5, "bin_weights": None, "bin_width": None,
                           "provided_edges": None, "add_outlier_edges": True, **(summarizer or {})},
            "warning_threshold": 0.0, "alert_threshold": 0.1, "run_until": None,
            "workspace_id": account.workspace_id, **extra}


@pytest.fixture
def drifted(stack, alice):
    """A pipeline with 500 baseline rows two hours ago and 400 shifted rows one hour ago."""
    name = f"drift{uuid.uuid4().hex[:6]}"
    created = post(stack, "pipelines/create", alice.token, {"pipeline_id": name, "workspace_id": alice.workspace_id,
                                                            "definition": {}}).json()
    now = int(time.time() * 1000)
    rng = np.random.default_rng(4)
    base, shifted = rng.normal(0, 1, 500), rng.normal(0.6, 1.2, 400)
    t0, t1 = now - 2 * HOUR, now - HOUR
    asyncio.run(publish_rows(stack, alice, name, base, t0, labels=True))
    asyncio.run(publish_rows(stack, alice, name, shifted, t1, labels=True))
    wait_rows(stack, alice, name, 900)
    return {"pipeline": {**created, "name": name}, "base": base, "shifted": shifted, "t0": t0, "t1": t1}


def fixed(drifted) -> dict:
    t0 = drifted["t0"]
    return {"Fixed": {"pipeline": drifted["pipeline"]["name"], "model": "m1", "start_at": iso(t0 - 60_000),
                      "end_at": iso(t0 + 60_000)}}


def expected(base: np.ndarray, window: np.ndarray, summarizer: dict) -> tuple[float, list[float]]:
    bounds = compute.boundaries(base, summarizer)
    b = compute.summarize(base, bounds, summarizer, False, None, None)["aggregated_values"]
    w = compute.summarize(window, bounds, summarizer, False, None, None)["aggregated_values"]
    value, scores, _ = compute.score(b, w, summarizer["metric"], summarizer.get("bin_weights"))
    return value, scores


def test_baseline_create_list_activate_and_interactive_run(stack, alice, drifted):
    body = config(alice, drifted["pipeline"], "drift assay", fixed(drifted), iso(drifted["t1"] - 1_800_000),
                  "1 hours")
    baseline = post(stack, "assays/run_interactive_baseline", alice.token, body)
    assert baseline.status_code == 200, baseline.text
    result = baseline.json()
    assert result["status"] == "BaselineRun" and result["score"] == 0.0 and result["scores"] == [0.0] * 7
    summary = result["baseline_summary"]
    assert summary["count"] == 500 and summary["edge_names"] == ["left_outlier", "q_20", "q_40", "q_60", "q_80",
                                                                 "q_100", "right_outlier"]
    assert abs(summary["mean"] - drifted["base"].mean()) < 1e-9 and summary["edges"][-1] is None
    assert summary["aggregated_values"] == pytest.approx([0, 0.2, 0.2, 0.2, 0.2, 0.2, 0])
    assert result["window_summary"]["edge_names"][1].startswith("e_")

    created = post(stack, "assays/create", alice.token, body)
    assert created.status_code == 200, created.text
    assay_id = created.json()["assay_id"]
    listed = post(stack, "assays/list", alice.token, {"pipeline_id": drifted["pipeline"]["pipeline_pk_id"]}).json()
    assert [a["id"] for a in listed] == [assay_id]
    assert listed[0]["name"] == "drift assay" and listed[0]["next_run"] and listed[0]["iopath"] == "output dense_1 0"
    shown = listed[0]["baseline"]["Fixed"]
    assert set(listed[0]["baseline"]) == {"Fixed"} and shown["pipeline"] == drifted["pipeline"]["name"]
    assert datetime.fromisoformat(shown["start_at"]) == datetime.fromisoformat(body["baseline"]["Fixed"]["start_at"])
    assert post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False}).json() == \
        {"id": assay_id, "active": False}
    assert post(stack, "assays/list", alice.token, {"pipeline_id": drifted["pipeline"]["pipeline_pk_id"]}
                ).json()[0]["active"] is False

    runs = post(stack, "assays/run_interactive", alice.token, {**body, "id": assay_id})
    assert runs.status_code == 200, runs.text
    [window] = runs.json()  # one window holds the shifted rows; later ones reach past now
    assert window["assay_id"] == assay_id and window["window_summary"]["count"] == 400
    value, scores = expected(drifted["base"], drifted["shifted"], body["summarizer"])
    assert abs(window["score"] - value) < 1e-9 and np.allclose(window["scores"], scores, atol=1e-12)
    assert window["status"] == ("Alert" if value > 0.1 else "Warning")
    baseline_rows = post(stack, "assays/get_baseline", alice.token, {
        "workspace_id": alice.workspace_id, "pipeline_name": drifted["pipeline"]["name"],
        "start": iso(drifted["t0"] - 60_000), "end": iso(drifted["t0"] + 60_000), "limit": 3}).json()
    assert len(baseline_rows) == 3 and baseline_rows[0]["time"] == drifted["t0"]
    assert {"time", "in.tensor", "out.dense_1", "metadata.last_model"} <= set(baseline_rows[0])


@pytest.mark.parametrize("summarizer", [
    {"bin_mode": "Quantile", "aggregation": "Density", "metric": "PSI"},
    {"bin_mode": "Equal", "aggregation": "Cumulative", "metric": "SumDiff", "num_bins": 8},
    {"bin_mode": "Equal", "aggregation": "Edges", "metric": "MaxDiff", "add_outlier_edges": False},
    {"provided_edges": [-1.0, 0.0, 0.5, 1.0], "aggregation": "Density", "metric": "Maximum Difference of Bins"},
    {"bin_mode": "Quantile", "aggregation": "Density", "metric": "Sum of the Difference of Bins", "num_bins": 3,
     "bin_weights": [0, 1, 2, 1, 0]},
])
def test_each_bin_mode_aggregation_and_metric(stack, alice, drifted, summarizer):
    body = config(alice, drifted["pipeline"], "modes", fixed(drifted), iso(drifted["t1"] - 1_800_000), "1 hours",
                  summarizer)
    response = post(stack, "assays/run_interactive", alice.token, body)
    assert response.status_code == 200, response.text
    [window] = response.json()
    value, scores = expected(drifted["base"], drifted["shifted"], body["summarizer"])
    assert abs(window["score"] - value) < 1e-9 and np.allclose(window["scores"], scores, atol=1e-12)
    metric = compute.metric_name(summarizer["metric"])
    assert (window["bin_index"] is not None) == (metric == "MaxDiff")
    again = post(stack, "assays/run_interactive", alice.token, body).json()[0]
    assert again["score"] == window["score"] and again["window_summary"] == window["window_summary"]  # deterministic


def test_bad_assays_are_400_with_the_reason(stack, alice, drifted):
    good = config(alice, drifted["pipeline"], "bad", fixed(drifted), iso(drifted["t1"] - 1_800_000), "1 hours")
    far_past = {"Fixed": {**fixed(drifted)["Fixed"], "start_at": "2001-01-01T00:00:00Z",
                          "end_at": "2001-01-02T00:00:00Z"}}
    both = ("assays/run_interactive", "assays/create")
    cases = [
        ({"summarizer": {**good["summarizer"], "num_bins": 1}}, "num_bins"),
        ({"summarizer": {**good["summarizer"], "metric": "Wasserstein"}}, "unknown metric"),
        ({"iopath": "output nope 0"}, "not logged"),
        ({"iopath": "output label 0"}, "not numbers"),
        ({"iopath": "input tensor 7"}, "out of range"),
        ({"iopath": "sideways tensor 0"}, "iopath"),
        ({"baseline": far_past}, "no logged values"),
        ({"window": {**good["window"], "width": "3 fortnights"}}, "duration"),
        ({"window": {**good["window"], "start": "2001-01-01T00:00:00Z", "width": "1 hours"},
          "run_until": "2001-01-01T05:00:00Z"}, "no window", ("assays/run_interactive",)),
        ({"baseline": {}}, "exactly one"),
    ]
    for change, words, *routes in cases:
        for route in (routes[0] if routes else both):
            response = post(stack, route, alice.token, {**good, **change})
            assert response.status_code == 400, (route, change, response.text)
            assert words in response.json()["msg"], (route, change, response.json())
    # no window ended yet (it starts now): not a bad request, no results at this time (seed 001's example, whose
    # windows start where its baseline ends; a 400 "no window has ended yet" before session 27)
    not_yet = post(stack, "assays/run_interactive", alice.token,
                   {**good, "window": {**good["window"], "start": iso(int(time.time() * 1000)), "width": "1 hours"}})
    assert not_yet.status_code == 200 and not_yet.json() == [], not_yet.text
    listed = post(stack, "assays/list", alice.token, {"pipeline_id": drifted["pipeline"]["pipeline_pk_id"]}).json()
    assert listed == []  # nothing was created by the bad requests


def test_an_over_long_name_or_iopath_is_400_and_nothing_is_stored(stack, alice, drifted):
    """The name and iopath ride in every events.assay.* event and every assays/list answer: one past the bounds was
    stored, its events too large for the bus sat in the outbox for good. Now a 400 naming the field and the limit."""
    good = config(alice, drifted["pipeline"], "n" * 255, fixed(drifted), iso(drifted["t1"] - 1_800_000), "1 hours")
    cases = [({"name": "n" * 256}, "name: String should have at most 255 characters"),
             ({"name": "é" * 1_000_000}, "name: String should have at most 255 characters"),
             ({"iopath": "output dense_1 0" + " " * 1024}, "iopath: String should have at most 1024 characters"),
             ({"window": {**good["window"], "model": "m" * 256}}, "window.model: String should have at most 255")]
    for change, words in cases:
        for route in ("assays/create", "assays/run_interactive", "assays/run_interactive_baseline"):
            response = post(stack, route, alice.token, {**good, **change})
            assert response.status_code == 400, (route, response.text[:300])
            assert response.json()["code"] == "invalid_request" and words in response.json()["msg"], route
    pipeline_id = drifted["pipeline"]["pipeline_pk_id"]
    assert post(stack, "assays/list", alice.token, {"pipeline_id": pipeline_id}).json() == []  # nothing stored
    created = post(stack, "assays/create", alice.token, good)  # at the bound: accepted, listed whole
    assert created.status_code == 200, created.text
    [listed] = post(stack, "assays/list", alice.token, {"pipeline_id": pipeline_id}).json()
    assert listed["id"] == created.json()["assay_id"] and listed["name"] == "n" * 255


def test_a_second_assay_of_a_name_in_a_pipeline_is_409_and_nothing_is_stored(stack, alice, drifted):
    """An assay's name is unique in its pipeline, as Wallaroo's assay names are unique (docs/assays.md, Names): a
    second create of the name, one after the other or two at once, is a 409 `conflict` naming the assay that has
    it, and the list keeps one. Before, both were stored and listed, indistinguishable by name. Another pipeline
    may use the name."""
    body = config(alice, drifted["pipeline"], "drift", fixed(drifted), None, "1 hours")
    pipeline_id = drifted["pipeline"]["pipeline_pk_id"]
    first = post(stack, "assays/create", alice.token, body)
    assert first.status_code == 200, first.text
    assay_id = first.json()["assay_id"]
    again = post(stack, "assays/create", alice.token, {**body, "iopath": "input tensor 1", "alert_threshold": 0.5})
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "conflict", again.text
    assert f"already has an assay named 'drift' (assay {assay_id})" in again.json()["msg"], again.text
    both = [{**body, "name": "twice"}] * 2
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda b: post(stack, "assays/create", alice.token, b), both))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    listed = post(stack, "assays/list", alice.token, {"pipeline_id": pipeline_id}).json()
    assert sorted(a["name"] for a in listed) == ["drift", "twice"], listed
    other = f"other{uuid.uuid4().hex[:6]}"
    created = post(stack, "pipelines/create", alice.token, {"pipeline_id": other, "workspace_id": alice.workspace_id,
                                                            "definition": {}}).json()
    elsewhere = config(alice, {**created, "name": other}, "drift", {"Static": {"values": [0.0, 1.0, 2.0, 3.0]}},
                       None, "1 hours")
    assert post(stack, "assays/create", alice.token, elsewhere).status_code == 200  # another pipeline's "drift"


def test_outsiders_get_404(stack, alice, bob, drifted):
    body = config(alice, drifted["pipeline"], "private", fixed(drifted), None, "1 hours")
    assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]
    for route, payload in (("assays/list", {"pipeline_id": drifted["pipeline"]["pipeline_pk_id"]}),
                           ("assays/set_active", {"id": assay_id, "active": False}),
                           ("assays/get_results", {"assay_id": assay_id}),
                           ("assays/create", {**body, "workspace_id": bob.workspace_id})):
        response = post(stack, route, bob.token, payload)
        assert response.status_code == 404, (route, response.text)
    assert post(stack, "assays/list", alice.token, {"pipeline_id": drifted["pipeline"]["pipeline_pk_id"]}
                ).json()[0]["active"] is True


async def _count_events(nc, subject: str) -> int:
    reply = await nc.request(subjects.LINEAGE_EVENTS_COUNT, json.dumps({"subject": subject}).encode(), timeout=10)
    return json.loads(reply.data)["data"]["count"]


def test_scheduled_windows_run_by_themselves_alert_and_survive_a_restart(stack, alice, drifted):
    body = config(alice, drifted["pipeline"], "scheduled", fixed(drifted), iso(int(time.time() * 1000)),
                  "2 seconds", alert_threshold=0.05, warning_threshold=0.01)
    assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]
    name = drifted["pipeline"]["name"]
    rng = np.random.default_rng(9)

    async def feed(done, most: float) -> None:
        """Shifted values, a batch every 0.3 s, until `done()` (asked between batches) or `most` seconds: the
        windows the test waits for are fed until they are scored. Before, fixed stretches of 7 s and 6 s (the
        second set of windows was scored ~2 s before it ended at load ~5)."""
        end = time.monotonic() + most
        while time.monotonic() < end:
            await publish_rows(stack, alice, name, rng.normal(2.0, 1.0, 40), int(time.time() * 1000))
            if await done():
                return
            await asyncio.sleep(0.3)

    def results() -> list[dict]:
        response = post(stack, "assays/get_results", alice.token, {"assay_id": assay_id})
        assert response.status_code == 200, response.text
        return response.json()

    async def two_scored() -> bool:
        return len(results()) >= 2

    asyncio.run(feed(two_scored, 20))
    deadline = time.monotonic() + 20
    while len(results()) < 2:
        assert time.monotonic() < deadline, "the scheduled assay did not run by itself"
        time.sleep(0.3)
    first = results()
    assert all(r["status"] == "Alert" and r["assay_id"] == assay_id for r in first)
    assert first[0]["window_start"] > first[-1]["window_start"]  # newest first

    async def alerts() -> int:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            return await _count_events(nc, subjects.EVENT_ASSAY_ALERT)
        finally:
            await nc.close()

    deadline = time.monotonic() + 10
    while asyncio.run(alerts()) < 2:
        assert time.monotonic() < deadline, "no events.assay.alert"
        time.sleep(0.3)

    def continued(later: list[dict]) -> bool:
        newest = datetime.fromisoformat(later[0]["window_start"].replace("Z", "+00:00"))
        return len(later) > len(first) + 1 and newest > datetime.now(UTC) - timedelta(seconds=8)

    async def continued_after_restart() -> bool:
        """Results are asked for only once a new assay runner answers its health subject: asked of the killed one,
        get_results waits out the gateway's 5 s bus timeout and answers 504."""
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            reply = json.loads((await nc.request(subjects.health("assay_runner"), b"{}", timeout=0.25)).data)
        except (nats_client.errors.TimeoutError, nats_client.errors.NoRespondersError):
            return False
        finally:
            await nc.close()
        return bool(reply.get("ok")) and reply["data"]["pid"] != pid and continued(results())

    pid = stack.state()["components"]["assay_runner"]["pid"]
    os.kill(pid, signal.SIGKILL)
    asyncio.run(feed(continued_after_restart, 30))
    deadline = time.monotonic() + 30
    while True:
        later = results()
        if continued(later):
            break
        assert time.monotonic() < deadline, "the schedule did not continue after a restart"
        time.sleep(0.3)
    starts = [r["window_start"] for r in later]
    assert len(starts) == len(set(starts))  # no window scored twice
    assert stack.state()["components"]["assay_runner"]["pid"] != pid
    post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False})


def test_a_window_waits_for_the_log_store_and_is_scored_with_every_row(stack, alice):
    """The log store's consumer paused (the log store behind: a busy machine, a restart) while a 1-second window
    closes with 40 rows published in it: the window is held, not scored empty and passed; once the log store
    catches up it is scored with all 40. Before, the scheduler scored it once, `close_delay` after it closed, with
    what the log store had then (nothing) and moved past it for good."""
    name = f"held{uuid.uuid4().hex[:6]}"
    created = post(stack, "pipelines/create", alice.token, {"pipeline_id": name, "workspace_id": alice.workspace_id,
                                                            "definition": {}}).json()
    pipeline = {**created, "name": name}
    settings = stack.settings()

    def listing() -> dict:
        return post(stack, "assays/list", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json()[0]

    async def pause(seconds: float | None) -> None:
        nc = await nats_client.connect(settings.nats.url)
        try:
            js = nc.jetstream()
            if seconds is None:
                await js.resume_consumer(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
            else:
                until = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
                assert (await js.pause_consumer(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE,
                                                until)).paused
        finally:
            await nc.close()

    asyncio.run(pause(90))
    try:
        start = int(time.time() * 1000)
        body = config(alice, pipeline, "held", {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}},
                      iso(start), "1 seconds")
        assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]
        first_end = datetime.fromtimestamp(start / 1000 + 1, UTC)
        asyncio.run(publish_rows(stack, alice, name, np.linspace(0.0, 1.0, 40), start + 300))
        assert time.time() < start / 1000 + 1 + settings.assays.close_delay, "published after the window was due"
        # the window is due at start + 1 + close_delay: well past it, it is still waiting, not passed. Three of the
        # scheduler's passes and at least 3 s: a pass that scored the window (the old code) reads the log store and
        # commits, at load well over a tick of the stack's 0.25 s (its runner's first numpy import among it). The
        # tick is the stack's own, from its env: stack.settings() has the 1-s default (as test_assay_events reads it)
        tick = float(stack.env.get("RAILYARD_ASSAYS__TICK", settings.assays.tick))
        waited = max(3 * tick, 3.0)
        time.sleep(max(0.0, start / 1000 + 1 + settings.assays.close_delay + waited - time.time()))
        held = listing()
        assert datetime.fromisoformat(held["next_run"].replace("Z", "+00:00")) == first_end, held
        assert post(stack, "assays/get_results", alice.token, {"assay_id": assay_id}).json() == []
    finally:
        asyncio.run(pause(None))
    deadline = time.monotonic() + 30
    while not (results := post(stack, "assays/get_results", alice.token, {"assay_id": assay_id}).json()):
        assert time.monotonic() < deadline, "the held window was not scored once the log store caught up"
        time.sleep(0.2)
    first = results[-1]
    assert datetime.fromisoformat(first["window_start"].replace("Z", "+00:00")) == first_end - timedelta(seconds=1)
    assert first["window_summary"]["count"] == 40 and first["logs_complete"] is True
    post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False})
