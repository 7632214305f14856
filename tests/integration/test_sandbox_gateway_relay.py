"""A task run's way to the gateway (Network.GATEWAY_ONLY: the sandbox's 127.0.0.1:<gateway port> relayed by a unix
socket to the gateway, shared/sandbox.py `_gateway_relay`) is the tenant's own: at most RELAY_CONNECTIONS open at
once, and, on a loopback gateway, from an address of the run owner's own rather than 127.0.0.1.

Before (until 2026-12-05) every relay connected from 127.0.0.1, the address the host's own clients use, and the
gateway counts connections (256), token requests and failed sign-ins per source address: one tenant's run that held
300 connections made the gateway answer `503 too many connections` to every other run and every local client (the
admin's CLI and UI included) for as long as it liked, and one that failed `admin`'s password ten times locked the
admin's sign-in from the host for 15 minutes. Real sandboxes; a local server stands for the gateway in the first
two tests, the third runs a real orchestration against a real stack."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from shared import sandbox
from shared.sandbox import RELAY_CONNECTIONS, Limits, SandboxSpec, relay_source
from shared.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    return Settings(stack={"data_dir": data})


def at(settings: Settings, port: int, **gateway) -> Settings:
    return Settings(stack={"data_dir": settings.stack.data_dir}, gateway={"host": "127.0.0.1", "port": port, **gateway})


async def run_with_gateway(settings: Settings, code: str, keys: list[str],
                           **gateway) -> tuple[list, list[str], int, int]:
    """Runs `code` in one GATEWAY_ONLY sandbox per source key, one after another, against a server on 127.0.0.1
    that holds every connection open without answering: (results, the peer address of every connection it saw,
    the most it held at once, the bytes it received)."""
    peers: list[str] = []
    held = 0
    most = 0
    received = 0

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal held, most, received
        peers.append(writer.get_extra_info("peername")[0])
        held += 1
        most = max(most, held)
        try:
            while data := await reader.read(65536):
                received += len(data)
        finally:
            held -= 1
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    results = []
    try:
        for number, key in enumerate(keys):
            results.append(await sandbox.run(SandboxSpec(
                argv=[sys.executable, "-c", textwrap.dedent(code.replace("PORT", str(port)))],
                workdir=settings.stack.data_dir / "work" / f"relay-{number}", network=sandbox.Network.GATEWAY_ONLY,
                source_key=key, limits=Limits(wall_seconds=60, open_files=1024)),
                settings=at(settings, port, **gateway)))
    finally:
        server.close()
    return results, peers, most, received


def test_a_sandbox_holds_at_most_its_share_of_connections_to_the_gateway(settings):
    """300 connections opened and held (more than the gateway's 256 per source): the gateway sees RELAY_CONNECTIONS
    of them at most, and every other is answered 503 by the relay, in the gateway's error shape (a typed JSON
    `{"code", "msg"}`, Retry-After), and closed; the ones let through still work."""
    code = """
        import json, select, socket, time
        CODE = "too_many_gateway_connections"
        held = [socket.create_connection(("127.0.0.1", PORT), timeout=10) for _ in range(300)]
        # until the relay has answered as many as it must refuse (10 s at most): more refused would leave the
        # server holding fewer than its share, which the test checks there
        answered, until = set(), time.monotonic() + 10
        while len(answered) < REFUSED and time.monotonic() < until:
            answered.update(select.select([s for s in held if s not in answered], [], [], 0.1)[0])
        time.sleep(0.5)  # the server accepted the first ones long before; held open a moment longer all the same
        # and any let through that was answered or closed meanwhile is read too (its answer, or b"", is one more
        # shape below): the ones let through must stay open and silent
        answered.update(select.select([s for s in held if s not in answered], [], [], 0)[0])
        refused, answers = 0, set()
        for sock in held:
            if sock not in answered:
                continue
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b"reset"
            sock.settimeout(10)
            try:
                while chunk := sock.recv(65536):  # to its end: the relay closes a refused connection
                    answer += chunk
            except OSError:
                pass
            head, _, body = answer.partition(b"\\r\\n\\r\\n")
            try:
                refused += head.startswith(b"HTTP/1.1 503") and json.loads(body)["code"] == CODE
            except ValueError:
                pass
            answers.add(answer.decode(errors="replace"))
        print(json.dumps({"refused": refused, "answers": sorted(answers)}), flush=True)
    """
    code = code.replace("REFUSED", str(300 - RELAY_CONNECTIONS))
    results, peers, most, _ = asyncio.run(run_with_gateway(settings, code, ["owner-a"]))
    assert results[0].returncode == 0, results[0].stderr_tail
    assert most == RELAY_CONNECTIONS, most
    said = json.loads(results[0].stdout)
    assert said["refused"] == 300 - RELAY_CONNECTIONS and len(said["answers"]) == 1, said
    head, _, body = said["answers"][0].partition("\r\n\r\n")
    assert head.split("\r\n")[0] == "HTTP/1.1 503 Service Unavailable", head
    headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:])
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "1", headers
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body.encode()), headers
    error = json.loads(body)
    assert set(error) == {"code", "msg"} and error["code"] == "too_many_gateway_connections", error
    assert f"{RELAY_CONNECTIONS} connections" in error["msg"] and "requests.Session" in error["msg"], error


def test_a_run_reaches_a_loopback_gateway_from_its_owners_own_address(settings):
    """Two runs of one owner come from one address, another owner's from another, none from 127.0.0.0/16 (the
    host's clients) nor from a trusted proxy's range (where a run could write its own X-Forwarded-For)."""
    code = """
        import socket
        socket.create_connection(("127.0.0.1", PORT), timeout=10).close()
        print("ok", flush=True)
    """
    trusted = relay_source("127.0.0.1", "owner-b", []) + "/32"
    results, peers, _, _ = asyncio.run(run_with_gateway(settings, code, ["owner-a", "owner-a", "owner-b"],
                                                     trusted_proxies=trusted))
    assert [r.stdout for r in results] == [b"ok\n"] * 3, [r.stderr_tail for r in results]
    assert len(peers) == 3 and peers[0] == peers[1] != peers[2], peers
    for peer in peers:
        address = ipaddress.ip_address(peer)
        assert address.is_loopback and address not in ipaddress.ip_network("127.0.0.0/16"), peer
    assert peers[2] != trusted.split("/")[0], (peers, trusted)


def test_a_run_reaches_the_gateway_when_its_owners_address_cannot_be_bound(settings, monkeypatch):
    """A host whose loopback holds 127.0.0.1/32 alone cannot bind 127.a.b.c (192.0.2.1, on no interface of this
    host, stands for it): the relay connects from the system's choice and the run still reaches the gateway. Before,
    each of the run's connections failed to bind and was closed unrelayed."""
    monkeypatch.setattr(sandbox, "relay_source", lambda *args: "192.0.2.1")
    code = """
        import socket
        socket.create_connection(("127.0.0.1", PORT), timeout=10).close()
        print("ok", flush=True)
    """
    results, peers, _, _ = asyncio.run(run_with_gateway(settings, code, ["owner-a"]))
    assert results[0].stdout == b"ok\n", results[0].stderr_tail
    assert peers == ["127.0.0.1"], peers


@pytest.mark.parametrize("case", ["every_candidate_trusted", "owners_address_not_bound"])
def test_a_run_whose_relay_would_come_from_a_trusted_proxy_is_refused(settings, monkeypatch, caplog, case):
    """The gateway believes X-Forwarded-For from a trusted proxy. A relay whose connection would reach it from one
    (the system's choice, 127.0.0.1 here: when trusted_proxies covers every candidate of relay_source, or when the
    owner's address cannot be bound and 127.0.0.1 is trusted) relays nothing: each connection is answered 503
    `gateway_relay_trusted` naming the address and the setting, and the scheduler's log says so once per run.
    Before, the run's request (with the X-Forwarded-For it chose) went through and the gateway counted it as that
    client."""
    if case == "every_candidate_trusted":
        trusted = "127.0.0.0/8"
    else:
        monkeypatch.setattr(sandbox, "relay_source", lambda *args: "192.0.2.1")
        trusted = "127.0.0.1"
    code = """
        import json, socket
        answers = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", PORT), timeout=10)
            sock.sendall(b"GET /v1/api/whoami HTTP/1.1\\r\\nhost: gateway\\r\\n"
                         b"x-forwarded-for: 203.0.113.7\\r\\n\\r\\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            answers.append(answer.decode())
        print(json.dumps(answers), flush=True)
    """
    with caplog.at_level(logging.ERROR, logger="railyard.sandbox"):
        results, peers, _, received = asyncio.run(run_with_gateway(settings, code, ["owner-a"],
                                                                   trusted_proxies=trusted))
    assert results[0].returncode == 0, results[0].stderr_tail
    answers = json.loads(results[0].stdout)
    assert len(answers) == 2 and answers[0] == answers[1], answers
    head, _, body = answers[0].partition("\r\n\r\n")
    assert head.split("\r\n")[0] == "HTTP/1.1 503 Service Unavailable", head
    headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:])
    assert headers["content-type"] == "application/json" and "retry-after" not in headers, headers
    error = json.loads(body)
    assert error["code"] == "gateway_relay_trusted", error
    assert "127.0.0.1" in error["msg"] and "RAILYARD_GATEWAY__TRUSTED_PROXIES" in error["msg"], error
    assert received == 0, received  # nothing of the run's reached the gateway
    assert all(peer == "127.0.0.1" for peer in peers), peers
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and "trusted_proxies" in r.getMessage()]
    assert len(errors) == 1 and "127.0.0.1" in errors[0], errors


def test_relay_source_only_on_ipv4_loopback():
    assert relay_source("10.1.2.3", "owner", []) is None and relay_source("::1", "owner", []) is None
    assert relay_source("gateway.railyard.svc", "owner", []) is None
    assert relay_source("localhost", "owner", []) == relay_source("127.0.0.1", "owner", [])
    assert relay_source("127.0.0.1", "owner", ["127.0.0.0/8"]) is None  # every candidate trusted: the system's choice


def test_relay_source_skips_the_loopback_broadcast(monkeypatch):
    """127.255.255.255 binds, but Linux then connects from 127.0.0.1: an owner whose digest gave it would have shared
    the host's address again. The next attempt's address is taken instead."""
    import hashlib

    real = hashlib.sha256

    class Broadcast:
        def digest(self) -> bytes:
            return b"\xff" * 32

    def sha256(data: bytes):
        return Broadcast() if data.startswith(b"0:") else real(data)  # the first attempt gives 127.255.255.255

    monkeypatch.setattr(hashlib, "sha256", sha256)
    assert relay_source("127.0.0.1", "owner", []) == str(ipaddress.IPv4Address(b"\x7f" + real(b"1:owner").digest()[:3]))


@pytest.mark.integration
def test_a_runs_failed_sign_ins_do_not_lock_the_user_out_of_the_host(stack, alice, bob):
    """bob's run fails alice's password past the lockout (the test stack locks after 5 failures from one address);
    alice then signs in from the host (127.0.0.1) at once. Before, the run's guesses came from 127.0.0.1 too and
    alice was locked out there (`account_locked`) for 15 minutes.

    The run came from the address of bob's own number, allocated by the task scheduler in its database
    (task_scheduler.relay_sources, store.relay_number): alice is locked out from that address, not another. And two
    scheduler processes asking at once for the same owners agree on one number each, no two alike, and asking again
    takes no number (a new owner's follows the last): tests/unit/test_sandbox_relay_numbers.py maps the numbers."""
    from services.task_scheduler import store
    from tests.integration.conftest import PASSWORD, TOKEN_PATH, query
    from tests.integration.test_orchestrations import ready_orchestration, run_once, wait_run

    secrets = stack.secrets()
    main = f"""
import json, os, urllib.error, urllib.parse, urllib.request
codes = []
for guess in range(7):
    form = urllib.parse.urlencode({{"grant_type": "password", "username": {alice.email!r},
                                   "password": "wrong%d" % guess, "client_id": {secrets["client_id"]!r},
                                   "client_secret": {secrets["client_secret"]!r}}})
    try:
        urllib.request.urlopen(os.environ["RAILYARD_CLIENT_URL"] + {TOKEN_PATH!r}, form.encode(), timeout=60)
        codes.append(200)
    except urllib.error.HTTPError as error:
        codes.append(json.loads(error.read()).get("error"))
print("codes", codes, flush=True)
"""
    orch = ready_orchestration(stack, bob, {"main.py": main})
    task = run_once(stack, bob, orch)
    run = wait_run(stack, bob, task, {"success", "failure"}, timeout=180)
    assert run["status"] == "success", run
    logs = httpx.post(f"{stack.api}/task/get_logs_for_run", json={"id": run["run_id"]},
                      headers={"Authorization": f"Bearer {bob.token}"}, timeout=30).text
    assert "account_locked" in logs, logs  # the guesses were counted and locked alice out at the run's address
    response = httpx.post(f"{stack.base_url}{TOKEN_PATH}", data={
        "grant_type": "password", "username": alice.email, "password": PASSWORD,
        "client_id": secrets["client_id"], "client_secret": secrets["client_secret"]}, timeout=30)
    assert response.status_code == 200, response.text

    owner = query(stack, "SELECT r.owner_id, r.n FROM task_scheduler.relay_sources r JOIN task_scheduler.tasks t"
                         " ON t.owner_id = r.owner_id WHERE t.id = $1", uuid.UUID(str(task)))
    assert len(owner) == 1, owner  # allocated at bob's run
    trusted = [p for p in stack.env["RAILYARD_GATEWAY__TRUSTED_PROXIES"].split(",") if p]
    address = relay_source("127.0.0.1", owner[0]["owner_id"], trusted, owner[0]["n"])
    assert address == sandbox.relay_numbered_address(owner[0]["n"], [ipaddress.ip_network(p) for p in trusted])
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        response = client.post(f"{stack.base_url}{TOKEN_PATH}", data={
            "grant_type": "password", "username": alice.email, "password": PASSWORD,
            "client_id": secrets["client_id"], "client_secret": secrets["client_secret"]})
    assert response.status_code == 401 and response.json().get("error") == "account_locked", response.text

    async def two_processes() -> tuple[list[int], list[int], int, int]:
        from shared.db import create_pool
        from tests.integration.conftest import service_schema

        migrations = Path(store.__file__).parent / "migrations"
        async with service_schema(stack, "relay", migrations) as one:
            other = await create_pool(stack.settings().postgres, await one.fetchval("SELECT current_schema()"))
            try:
                owners = [f"owner-{i}" for i in range(6)]
                first = await asyncio.gather(*(store.relay_number(pool, o) for o in owners for pool in (one, other)))
                alone = await store.relay_number(other, "owner-alone")  # after any number a race took and left
                again = await asyncio.gather(*(store.relay_number(pool, o) for o in owners for pool in (other, one)))
                return first, again, alone, await store.relay_number(one, "owner-new")
            finally:
                await other.close()

    first, again, alone, new = asyncio.run(two_processes())
    assert first[0::2] == first[1::2] == again[0::2] == again[1::2], (first, again)  # each owner: one number
    assert len(set(first)) == 6 and alone > max(first), (first, alone)  # no two owners alike
    assert new == alone + 1, (alone, again, new)  # asking again for owners that have one took no number
