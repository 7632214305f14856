"""A deployment's status while its replica is too busy to answer the deployer's status probe, and the route of a
deployment with no replica serving, on the real stack (docs/deployment.md, "Replica status: busy is not starting";
docs/inference.md, "Deployments").

The probe is answered on the replica's event loop, beside its requests; a replica short of CPU answers it late, past
the probe's 0.5 s on a loaded machine. A replica held by SIGSTOP is that replica, made certain: alive, subscribed, and
answering nothing. Before 2026-12-05 its first unanswered probe made the deployment `Starting` (status, the gateway's
route resolved again for every request, OIP's model ready); now it keeps its last answer until its probes went
unanswered for settings.deployer.silent_kept_for seconds (the test stack's: tests/stack.py DEPLOYER_SILENT_KEPT_FOR,
5 s) and SILENT_KEPT_PROBES in a row, then is `Starting` with the reason. Held past the deployer's liveness bound (the
test stack's: tests/stack.py DEPLOYER_LIVENESS_TIMEOUT, 10 s) it is hung:
killed and replaced (docs/deployment.md, "Liveness: a hung replica is replaced"); before 2026-12-05 it stayed in the
deployment's queue group, taking a share of the requests, until a redeploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import nats
import psutil
import pytest
import requests

from bench import loadgen
from shared import subjects
from tests.integration.conftest import Account, post
from tests.local_nats import subscribed
from tests.models import ccfraud_onnx, sample_rows
from tests.stack import DEPLOYER_LIVENESS_TIMEOUT, DEPLOYER_SILENT_KEPT_FOR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = "application/json; format=pandas-records"
ONE_ROW = json.dumps([{"tensor": sample_rows(1)[0].tolist()}])


def _deployed(stack, account: Account, pipeline: str) -> tuple[str, str, dict]:
    """(deployment name, inference URL, pipelines/deploy body) of `pipeline`: one ccfraud step, one replica."""
    uploaded = requests.post(f"{stack.api}/models/upload_stream", files={"file": (pipeline, ccfraud_onnx())},
                             data={"name": pipeline, "workspace_id": account.workspace_id},
                             headers={"Authorization": f"Bearer {account.token}"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    version = post(stack, "pipelines/create", account.token, {
        "pipeline_id": pipeline, "workspace_id": account.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": pipeline}]}}]}})
    assert version.status_code == 200, version.text
    body = {"deploy_id": pipeline, "pipeline_id": version.json()["pipeline_pk_id"],
            "pipeline_version_pk_id": version.json()["pipeline_variant_pk_id"]}
    deployed = post(stack, "pipelines/deploy", account.token, body)
    assert deployed.status_code == 200, deployed.text
    url = post(stack, "admin/get_pipeline_external_url", account.token,
               {"workspace_id": account.workspace_id, "pipeline_name": pipeline}).json()["url"]
    return f"{pipeline}-{deployed.json()['id']}", url, body


def _status(stack, account: Account, name: str) -> dict:
    response = post(stack, "status/get_deployment", account.token, {"name": name})
    assert response.status_code == 200, response.text
    return response.json()


def _polled_status(stack, account: Account, name: str) -> dict:
    """_status for a loop waiting for one: a read the deployer did not answer in time (a 504, seen at load 42) is
    one more look, not the test's failure."""
    response = post(stack, "status/get_deployment", account.token, {"name": name})
    if response.status_code == 504 and response.json().get("code") == "upstream_timeout":
        return {"status": None}
    assert response.status_code == 200, response.text
    return response.json()


def _infer(url: str, token: str) -> requests.Response:
    return requests.post(url, data=ONE_ROW, timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": RECORDS})


def _replica_pids(stack, name: str) -> set[int]:
    """The live engine replica processes of deployment `name` (their spec files are under deployments/<name>/)."""
    folder = (stack.data_dir / "deployments" / name).resolve()
    found = set()
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "services.engine.replica" in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE and \
                Path(cmdline[cmdline.index("services.engine.replica") + 1]).parent == folder:
            found.add(process.pid)
    return found


def _until(check, what: str, within: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(every)
    return found


def _first_read(read, wanted, what: str, within: float = 60.0, every: float = 0.25, at_once: int = 4):
    """The first answer of `read` that `wanted` accepts, reads started every `every` s with up to `at_once` under
    way: one read held up (a 504 only after the gateway's 5 s, at load > 40) does not hold up the next, so a state
    is seen about one read's time after it came, not a slow read's. Reads still under way are left to end."""
    pool = ThreadPoolExecutor(at_once)
    deadline, under_way = time.monotonic() + within, set()
    try:
        while True:
            assert time.monotonic() < deadline, what
            if len(under_way) < at_once:
                under_way.add(pool.submit(read))
            done, under_way = wait(under_way, timeout=every, return_when=FIRST_COMPLETED)
            for future in done:
                if wanted(found := future.result()):
                    return found
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_a_busy_replica_keeps_its_deployment_running(stack, alice):
    name, url, _ = _deployed(stack, alice, "busystatus")
    assert _status(stack, alice, name)["status"] == "Running"
    [pid] = _replica_pids(stack, name)

    # serving a saturating load (bounded: 3 s, loopback) while the status is read: Running throughout
    request = loadgen.build_request(url, ONE_ROW.encode(), {"Authorization": f"Bearer {alice.token}",
                                                             "Content-Type": RECORDS})

    answered: Counter[int] = Counter()

    async def worker(until: float) -> None:
        connection = await loadgen.Connection(url).open()
        try:  # any answer counts (a loaded machine's 504 from auth is not this test's subject)
            while time.monotonic() < until and answered.total() < 20_000:
                answered[(await connection.send(request))[0]] += 1
        finally:
            connection.close()

    async def loaded() -> list[str]:
        load = asyncio.gather(*(worker(time.monotonic() + 3.0) for _ in range(8)))
        seen = []
        while not load.done():
            seen.append((await asyncio.to_thread(_status, stack, alice, name))["status"])
        await load
        return seen

    seen = asyncio.run(loaded())
    assert answered[200] > 0, answered
    assert seen and set(seen) == {"Running"}, seen

    # answering nothing at all (held): its probes time out, and it is kept Running for the stack's silent_kept_for
    kept_for = float(stack.env["RAILYARD_DEPLOYER__SILENT_KEPT_FOR"])
    assert kept_for == DEPLOYER_SILENT_KEPT_FOR < DEPLOYER_LIVENESS_TIMEOUT
    os.kill(pid, signal.SIGSTOP)
    try:
        held_at = time.monotonic()
        kept = []
        while time.monotonic() - held_at < kept_for / 2:  # each read waits out a probe of 0.5 s
            status = _polled_status(stack, alice, name)  # a read not answered in time (a 504) keeps nothing
            if status["status"] is not None and time.monotonic() - held_at < kept_for:  # within the bound
                kept.append(status)
        assert kept, "no status read within the bound (a machine too loaded for this test)"
        assert all(s["status"] == "Running" and s["engines"][0]["status"] == "Running" for s in kept), kept
        assert kept[-1]["engines"][0]["model_statuses"]["models"][0]["name"] == "busystatus", kept[-1]
        # silent past the bound: Starting, and the status says why (seen as soon as it comes: the hold must end
        # before the liveness bound)
        starting = _first_read(lambda: _polled_status(stack, alice, name), lambda s: s["status"] == "Starting",
                               "still Running long after its probes stopped being answered")
        assert "answered no status probe" in " ".join(starting["details"]), starting
        assert starting["engines"][0]["pid"] == pid  # the same replica, not replaced: it is alive
    finally:
        os.kill(pid, signal.SIGCONT)
        held_for = time.monotonic() - held_at
    # the same replica serves again, never restarted. Held past the liveness bound (silent for
    # DEPLOYER_LIVENESS_TIMEOUT from the first liveness probe the hold left unanswered, so not before
    # held_for reaches it) it may have been killed as hung (test_a_hung_replica_is_killed_and_replaced): measured
    # here, not assumed from held_for (~kept_for + 0.5 s; before, a hold of 15 s failed the test even when the
    # replica was kept)
    too_loaded = f"held {held_for:.1f} s" + (": a machine too loaded for this test"
                                             if held_for >= DEPLOYER_LIVENESS_TIMEOUT else "")
    running = _until(lambda: (s := _polled_status(stack, alice, name))["status"] == "Running" and s,
                     "not Running once it answers again")
    assert (running["engines"][0]["pid"], running["engines"][0]["restarts"]) == (pid, 0), (too_loaded, running)
    assert _infer(url, alice.token).status_code == 200
    assert _replica_pids(stack, name) == {pid}, too_loaded


def test_an_inference_on_a_starting_deployment_resolves_its_route_once(stack, alice):
    """No replica serving (the one replica killed, its replacement held before it subscribes): the gateway's route
    says Starting, and each request to it is resolved once (it was twice: the route, then again once the engine's
    queue had no responder), answered 503 'starting' with Retry-After."""
    name, url, _ = _deployed(stack, alice, "startingroute")
    assert _infer(url, alice.token).status_code == 200  # the gateway caches its route, Running
    [killed] = _replica_pids(stack, name)
    os.kill(killed, signal.SIGKILL)
    held = None
    try:
        deadline = time.monotonic() + 60
        while held is None:  # the supervisor's replacement, held while it imports (long before it subscribes)
            assert time.monotonic() < deadline, "the killed replica was not replaced"
            fresh = _replica_pids(stack, name) - {killed}
            if fresh:
                held = fresh.pop()
                os.kill(held, signal.SIGSTOP)
        engines = _status(stack, alice, name)["engines"]
        assert [e["status"] for e in engines] == ["Starting"], engines  # it never answered: not subscribed

        first = _infer(url, alice.token)  # the cached Running route: no responder, the deployer asked, Starting
        assert first.status_code == 503, first.text
        time.sleep(1.0)  # a background refresh of the route that request may have started ends

        async def resolves_of_one_request() -> tuple[requests.Response, int]:
            nc = await nats.connect(stack.nats_url("ops"))
            try:
                seen = []

                async def count(msg) -> None:
                    seen.append(msg.data)

                subscription = await nc.subscribe(subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, cb=count)
                await subscribed(nc)  # at the server before the request (one flush's PING can overtake the SUB)
                answer = await asyncio.to_thread(_infer, url, alice.token)
                await nc.flush()
                await asyncio.sleep(0.5)  # a resolve's copy still on its way here
                await subscription.unsubscribe()
                return answer, sum(name.encode() in data for data in seen)
            finally:
                await nc.close()

        answer, resolves = asyncio.run(resolves_of_one_request())
        assert answer.status_code == 503, answer.text
        assert answer.json()["msg"] == f"deployment {name!r} is starting; retry shortly", answer.text
        assert answer.headers.get("Retry-After") == "1", answer.headers
        assert resolves == 1, resolves
    finally:
        if held is not None:
            os.kill(held, signal.SIGCONT)
    _until(lambda: _polled_status(stack, alice, name)["status"] == "Running", "the replacement never served")
    _until(lambda: _infer(url, alice.token).status_code == 200, "the gateway did not send to the replacement")


def _deployer_log(stack) -> str:
    return Path(stack.state()["components"]["deployer"]["log"]).read_text(errors="replace")


def test_a_hung_replica_is_killed_and_replaced_and_a_busy_one_is_not(stack, alice):
    """Busy (a saturating load for longer than the liveness bound, nobody reading the status): the same replica.
    Hung (SIGSTOP: subscribed, answering nothing), nobody reading the status either (the deployer probes the replicas
    itself): killed within the bound and replaced by a new process, the deployment Running again and inferring.
    The two are two deployments at once: the busy one's load runs from the hold until past the bound, while the
    deployer takes the hung one for what it is (they ran one after the other, each for the bound and more)."""
    busy_name, busy_url, _ = _deployed(stack, alice, "livenessbusy")
    name, url, _ = _deployed(stack, alice, "livenessreplaced")
    assert _status(stack, alice, busy_name)["status"] == "Running"
    assert _status(stack, alice, name)["status"] == "Running"
    [busy_pid] = _replica_pids(stack, busy_name)
    [pid] = _replica_pids(stack, name)

    request = loadgen.build_request(busy_url, ONE_ROW.encode(), {"Authorization": f"Bearer {alice.token}",
                                                                  "Content-Type": RECORDS})
    answered: Counter[int] = Counter()

    async def worker(until: float) -> None:
        connection = await loadgen.Connection(busy_url).open()
        try:
            while time.monotonic() < until:
                answered[(await connection.send(request))[0]] += 1
        finally:
            connection.close()

    def hung() -> tuple[set[int], float]:
        """The hung replica's replacement, and how long after the hold it came at least (from the last look that
        did not find it: a look is ~50 ms of CPU among a stack's processes, so one every 0.5 s)."""
        # the first probe after the hold: within a period (bound / probes) and its 2 s wait; then the bound; then
        # SIGKILL at the second look at its state, 0.25 s (a process that stays stopped gets no grace: it cannot take
        # SIGTERM; STOPPED_LOOK). Generous for a loaded machine
        deadline, fresh, not_yet = time.monotonic() + DEPLOYER_LIVENESS_TIMEOUT * 6, set(), held_at
        while not fresh:
            assert time.monotonic() < deadline, "a hung replica was not replaced"
            looked_at = time.monotonic()
            if not (fresh := _replica_pids(stack, name) - {pid}):
                not_yet = looked_at
                time.sleep(0.5)
        _until(lambda: pid not in _replica_pids(stack, name), "the hung replica was not killed", within=30,
               every=0.5)
        return fresh, not_yet - held_at

    async def busy_and_hung() -> tuple[set[int], float]:  # the load bounded: the bound and 5 s more, 8 connections
        until = time.monotonic() + DEPLOYER_LIVENESS_TIMEOUT + 5  # on loopback
        load = asyncio.gather(*(worker(until) for _ in range(8)))
        try:
            return await asyncio.to_thread(hung)
        finally:
            await load

    os.kill(pid, signal.SIGSTOP)
    held_at = time.monotonic()
    try:
        fresh, replaced_after = asyncio.run(busy_and_hung())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert answered[200] > 0, answered
    assert _replica_pids(stack, busy_name) == {busy_pid}, "a busy replica was replaced"
    assert _status(stack, alice, busy_name)["engines"][0]["restarts"] == 0

    assert replaced_after >= DEPLOYER_LIVENESS_TIMEOUT - 1, f"replaced after {replaced_after:.1f} s"
    running = _until(lambda: (s := _polled_status(stack, alice, name))["status"] == "Running" and s,
                     "the replacement never served")
    [engine] = running["engines"]
    assert engine["pid"] in fresh and engine["restarts"] == 1, engine
    assert engine["last_restart"].startswith("hung: it answered no status probe for"), engine
    assert _infer(url, alice.token).status_code == 200
    warned = [line for line in _deployer_log(stack).splitlines()
              if "killing and replacing it" in line and f"pid {pid})" in line]
    assert warned and "WARNING" in warned[0], warned
    # stopped: SIGKILL once seen stopped, not the grace it could never use (services/deployer/backend.py STOPPED_LOOK)
    assert any("is stopped: killed without waiting out" in line and f"pid {pid})" in line
               for line in _deployer_log(stack).splitlines()), "the stopped replica waited out its grace"
