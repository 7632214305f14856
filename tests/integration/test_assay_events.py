"""Assay events are sent once, whatever happens after a window's result is committed (docs/assays.md, Events and
Several assay runners): the EVENTS stream refusing the alerts while windows are scored (they are published once it
accepts again), and two assay runners over one database (each window read, stored and alerted once); and an assay
set inactive during a pass stays so. The events are read from the EVENTS stream itself: what its consumers
(lineage) are handed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import nats as nats_client
import numpy as np
import pytest

from shared import subjects
from tests.integration import test_assays
from tests.integration.bus_events import stream_events
from tests.integration.conftest import Account, post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_assays import config, iso, publish_rows
from tests.integration.test_logs import wait_rows
from tests.local_nats import subscribed
from tests.stack import service_process, wait_serving

pytestmark = pytest.mark.integration


async def assay_events(stack, assay_id: int) -> list[dict]:
    """Every events.assay.warning / .alert of the assay the EVENTS stream holds, in stream order (stream_events:
    it skips the bodies test_dead_letters leaves on events.assay.alert, which are not events)."""
    return [e for e in await stream_events(stack, "events.assay.>", "assay_id", {assay_id})
            if e["_subject"] != subjects.EVENT_ASSAY_CREATED]


def pipeline_of(stack, account: Account) -> dict:
    name = f"alerts{uuid.uuid4().hex[:6]}"
    created = post(stack, "pipelines/create", account.token, {"pipeline_id": name, "workspace_id": account.workspace_id,
                                                              "definition": {}}).json()
    return {**created, "name": name}


def results_of(stack, account: Account, assay_id: int) -> list[dict]:
    response = post(stack, "assays/get_results", account.token, {"assay_id": assay_id})
    assert response.status_code == 200, response.text
    return response.json()


def check_once(results: list[dict], events: list[dict]) -> None:
    """One event per Warning/Alert result, for its window, none for another window, none twice."""
    flagged = sorted(r["window_start"] for r in results if r["status"] in ("Warning", "Alert"))
    assert flagged, results
    seen = sorted(iso_z(e["window_start"]) for e in events)
    assert seen == sorted(iso_z(w) for w in flagged), (len(seen), len(flagged))
    assert len({e["event_id"] for e in events}) == len(events)
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's de-duplication key


def iso_z(moment: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(moment.replace("Z", "+00:00")).isoformat()


@contextlib.asynccontextmanager
async def events_refused(stack):
    """The EVENTS stream refuses every publish (a largest message of 16 bytes) until the block ends: a real
    JetStream error for each publish_event, as a stream at its limits or an unreachable server gives."""
    nc = await nats_client.connect(stack.settings().nats.url)
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    kept = info.config.max_msg_size
    try:
        info.config.max_msg_size = 16
        await js.update_stream(info.config)
        yield
    finally:
        info = await js.stream_info(subjects.EVENTS_STREAM)
        info.config.max_msg_size = kept if kept is not None else -1
        await js.update_stream(info.config)
        await nc.close()


def test_alerts_the_stream_refused_are_published_once_it_accepts_them(stack, alice):
    """Windows scored while EVENTS refuses every publish: their results are stored, and their alerts reach the
    stream once it accepts again, once each. Before the outbox the publish after the commit failed, the pass
    logged 'could not run' and the alert was gone for good (results stored, no event ever)."""
    pipeline = pipeline_of(stack, alice)
    start = int(time.time() * 1000)
    body = config(alice, pipeline, "refused", {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}},
                  iso(start), "1 seconds")
    assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]  # its created event goes out

    async def scored_while_refused() -> int:
        # the log store takes the rows' batches once the deployer's announcement of their (made-up) deployment is
        # read: announced while EVENTS accepts, as a real deployment is before it logs (publish_rows announces only
        # a deployment not announced yet, and inside the block EVENTS refused that announcement too)
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, fake_deployment(alice.workspace_id, pipeline["name"]))
        finally:
            await nc.close()
        async with events_refused(stack):
            rng = np.random.default_rng(3)
            for _ in range(8):  # rows in about three 1-second windows
                now_ms = int(time.time() * 1000)
                await publish_rows(stack, alice, pipeline["name"], rng.normal(0, 1, 20), np.full(20, now_ms))
                await asyncio.sleep(0.3)
            deadline = time.monotonic() + 30
            while len(stored := await asyncio.to_thread(results_of, stack, alice, assay_id)) < 3:
                assert time.monotonic() < deadline, f"windows not scored: {stored}"
                await asyncio.sleep(0.3)
            assert await assay_events(stack, assay_id) == []  # refused: none reached the stream yet
            return len(stored)

    asyncio.run(scored_while_refused())
    post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False})
    deadline = time.monotonic() + 30
    while True:  # the stream accepts again: the outbox's next round (at most its retry period away) sends them
        flagged = [r for r in results_of(stack, alice, assay_id) if r["status"] in ("Warning", "Alert")]
        if len(asyncio.run(assay_events(stack, assay_id))) >= len(flagged):
            break
        assert time.monotonic() < deadline, "the refused alerts were not published once the stream accepted again"
        time.sleep(0.3)
    events = asyncio.run(assay_events(stack, assay_id))
    check_once(results_of(stack, alice, assay_id), events)

    async def send_again(event: dict) -> bool:
        """What a runner that died between JetStream's ack and the row's delete does at its next round."""
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            body = {k: v for k, v in event.items() if not k.startswith("_")}
            ack = await nc.jetstream().publish(subjects.EVENT_ASSAY_ALERT, json.dumps(body).encode(),
                                               headers={"Nats-Msg-Id": event["_msg_id"]})
            return ack.duplicate
        finally:
            await nc.close()

    assert asyncio.run(send_again(events[0]))  # dropped by the stream's duplicate window
    assert len(asyncio.run(assay_events(stack, assay_id))) == len(events)


@contextlib.contextmanager
def second_assay_runner(stack, tmp_path):
    """Another assay-runner process on the stack, as the supervisor starts one: a second replica."""
    env = {k: v for k, v in stack.env.items() if k.startswith(("RAILYARD_ASSAYS__", "RAILYARD_AUTH__"))}
    log = tmp_path / "assay_runner.log"
    with service_process(stack, "assay_runner", log, env) as process:
        wait_serving(process, log, "the second assay runner")
        yield process, log


async def _not_yet(nc, workspace_id: int, deployment: str) -> None:
    """publish_rows' announcement left out: the deployment of its batch is announced later (the deployer's event
    still in its outbox), and the log store holds the batch until then (services/log_store/deployments.py)."""


async def test_two_assay_runners_score_store_and_alert_each_window_once(stack, alice, tmp_path, monkeypatch):
    """Two assay runners that both see an assay's 120 windows due at once, each window with drifted rows: each
    window is read from the log store once (scored once), gets one result and one alert. Before, both runners'
    schedulers read the assay as due at their ticks and both scored every window (a pass of 120 windows outlasts a
    tick); the unique key dropped the second result, but both published an alert per window (240 events, each with
    its own event id, so neither the stream nor lineage could tell them apart). With the outbox alone (the result's
    insert adding the event) the alerts were right but every window was still read and scored twice.

    Both runners see the windows due before either may score them: the rows' batch is of a deployment not announced
    yet, which the log store holds (its windows wait for it, however long due); the second runner starts after the
    assay is created (its first pass reads when the assay is due; a runner that did not create an assay sleeps up to
    SCHEDULER_IDLE, 60 s, and the second runner was up only ~3 s of the test: since 8dca0bc7 it passed with the
    advisory lock removed); the deployment is announced once every window is due and both runners look every tick,
    and the log store stores the batch at once: both find all 120 ready within a tick of each other. 10-ms windows:
    the 120 are due ~3 s after the publish."""
    pipeline = await asyncio.to_thread(pipeline_of, stack, alice)
    settings = stack.settings().assays  # the defaults: the test stack's own are in its env
    tick = float(stack.env.get("RAILYARD_ASSAYS__TICK", settings.tick))
    close_delay = float(stack.env.get("RAILYARD_ASSAYS__CLOSE_DELAY", settings.close_delay))
    windows, width_ms = 120, 10
    reads: list[tuple[int, int]] = []  # the windows the runners read, as the log store is asked (a copy of each)

    async def on_read(message) -> None:
        asked = json.loads(message.data)
        if asked.get("pipeline") == pipeline["name"]:
            reads.append((asked["start_ms"], asked["end_ms"]))

    nc = await nats_client.connect(stack.settings().nats.url)
    runner = second_assay_runner(stack, tmp_path)
    deployment = fake_deployment(alice.workspace_id, pipeline["name"])
    started = announced = False
    try:
        await nc.subscribe(subjects.LOG_STORE_READ_FIELD, cb=on_read)
        await subscribed(nc)  # at the server before a runner reads: every read counted
        # windows that start after the publish: a runner's watermark (everything published by t stored) is at most
        # the moment before it, so none of them is taken for complete while the log store holds the batch
        start = int(time.time() * 1000) + 300
        times = start + np.repeat(np.arange(windows) * width_ms, 4) + np.tile([1, 3, 5, 7], windows)  # 4 a window
        rng = np.random.default_rng(5)
        with monkeypatch.context() as patched:
            patched.setattr(test_assays, "announce", _not_yet)  # publish_rows' announcement comes later
            await publish_rows(stack, alice, pipeline["name"], rng.normal(0, 1, len(times)), times)
        body = config(alice, pipeline, "replicas", {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}},
                      iso(start), f"{width_ms / 1000} seconds", run_until=iso(start + windows * width_ms))
        created = await asyncio.to_thread(post, stack, "assays/create", alice.token, body)  # the stack's runner's
        assay_id = created.json()["assay_id"]
        process, log = await asyncio.to_thread(runner.__enter__)
        started = True
        # the second runner's first pass, a tick after it serves, reads the assay (due, or when it will be); then
        # both look every tick until the windows are complete
        release = max(time.time() + 3 * tick, (start + windows * width_ms) / 1000 + close_delay)
        await asyncio.sleep(release + 2 * tick - time.time())
        assert await asyncio.to_thread(results_of, stack, alice, assay_id) == []  # held: nothing scored yet
        assert reads == []
        await announce(nc, alice.workspace_id, deployment)
        announced = True
        deadline = time.monotonic() + 60
        while len(results := await asyncio.to_thread(results_of, stack, alice, assay_id)) < windows:
            assert process.poll() is None, f"the second assay runner exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{len(results)} of {windows} windows scored"
            await asyncio.sleep(0.25)
        deadline = time.monotonic() + 30
        while len(events := await assay_events(stack, assay_id)) < windows:
            assert time.monotonic() < deadline, f"{len(events)} alerts of {windows}"
            await asyncio.sleep(0.25)
        listed = (await asyncio.to_thread(post, stack, "assays/list", alice.token,
                                          {"pipeline_id": pipeline["pipeline_pk_id"]})).json()[0]
        assert listed["active"] is False  # past run_until: neither runner has anything more to do
        # a second pass's reads or alerts show by now: a pass the other runner began before this commit (both saw
        # the windows complete within a tick of each other) reads its 120 windows in about half a second here, and the
        # outbox's send is woken by the result's commit
        await asyncio.sleep(1.5)
        results = await asyncio.to_thread(results_of, stack, alice, assay_id)
        assert len(results) == windows and len({r["window_start"] for r in results}) == windows
        assert all(r["status"] == "Alert" for r in results)
        check_once(results, await assay_events(stack, assay_id))
        assert len(reads) == windows and len(set(reads)) == windows, f"{len(reads)} reads of {windows} windows"
    finally:
        if not announced:  # no batch left held for the tests after this one
            await announce(nc, alice.workspace_id, deployment)
        if started:
            await asyncio.to_thread(runner.__exit__, None, None, None)
        await nc.close()


def test_an_assay_deactivated_while_its_windows_are_scored_stays_inactive(stack, alice):
    """set_active(false) answered while a pass scores the assay's windows: the pass's commit moved the schedule
    and wrote `active` as it had read it (true), so the assay was active again and went on being scored."""
    pipeline = pipeline_of(stack, alice)
    windows = 120
    start = int(time.time() * 1000) - (windows + 5) * 1000
    times = start + np.arange(windows * 4) * 250 + 100
    asyncio.run(publish_rows(stack, alice, pipeline["name"], np.random.default_rng(6).normal(0, 1, len(times)),
                               times))
    wait_rows(stack, alice, pipeline["name"], len(times))
    body = config(alice, pipeline, "stopped", {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}}, iso(start),
                  "1 seconds")
    assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]

    async def deactivate_once_scoring() -> None:
        """set_active(false) once the runner has asked the log store for the assay's first window."""
        nc = await nats_client.connect(stack.settings().nats.url)
        asked = asyncio.Event()

        async def on_read(message) -> None:
            if json.loads(message.data).get("pipeline") == pipeline["name"]:
                asked.set()

        try:
            await nc.subscribe(subjects.LOG_STORE_READ_FIELD, cb=on_read)
            await subscribed(nc)
            await asyncio.wait_for(asked.wait(), 30)
            answer = await asyncio.to_thread(post, stack, "assays/set_active", alice.token,
                                             {"id": assay_id, "active": False})
            assert answer.status_code == 200, answer.text
        finally:
            await nc.close()

    asyncio.run(deactivate_once_scoring())
    deadline = time.monotonic() + 60
    while not results_of(stack, alice, assay_id):  # the pass under way commits its windows
        assert time.monotonic() < deadline, "the pass under way stored nothing"
        time.sleep(0.3)
    listed = post(stack, "assays/list", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json()[0]
    assert listed["active"] is False, listed
