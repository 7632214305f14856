"""The gateway under abuse: the token is checked before any body byte is read, bodies have a deadline and a
size fitting their route, a compressed Arrow body is bounded by the request limit before it is decoded, the
token endpoint is rate-limited per source address, and failed logins lock a user out for the attacker's address
only. Other source addresses are other loopback addresses (127.0.0.2, 127.0.0.3): Linux routes all of 127/8."""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tests.integration.conftest import PASSWORD, client_for

pytestmark = pytest.mark.integration

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
MiB = 1024 * 1024


def _port(stack) -> int:
    return int(stack.env["RAILYARD_GATEWAY__PORT"])


def _send_headers_then_wait(stack, path: str, headers: dict[str, str], first: bytes, *, source: str = "127.0.0.1",
                            wait: float = 10.0) -> tuple[int, float, bytes]:
    """Send the request line, headers and only `first` body bytes; (status, seconds to answer, answer) while the
    rest of the body is never sent."""
    sock = socket.create_connection(("127.0.0.1", _port(stack)), timeout=wait, source_address=(source, 0))
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n" + first)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        seconds = time.monotonic() - started
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, seconds, answer


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


INFER = "/v1/api/pipelines/infer/anything-1/anything"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token"])
def test_an_unauthenticated_body_is_refused_before_it_is_read(stack, framing, authorization):
    # 60 MiB announced (chunked: no length at all), 64 KiB sent: the answer comes without the rest being read
    headers = {"Content-Type": "application/vnd.apache.arrow.file"}
    if authorization:
        headers["Authorization"] = authorization
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        first = _chunk(b"\0" * 65536)
    else:
        headers["Content-Length"] = str(8 * MiB)  # under the test stack's 16 MiB limit: only the token refuses it
        first = b"\0" * 65536
    status, seconds, answer = _send_headers_then_wait(stack, INFER, headers, first)
    assert status == 401, answer
    assert seconds < 5, seconds
    # a declared 60 MiB is above the body limit: refused from the header alone, token or not
    headers.pop("Transfer-Encoding", None)
    headers["Content-Length"] = str(60 * MiB)
    status, _, answer = _send_headers_then_wait(stack, INFER, headers, b"\0" * 65536)
    assert status in (401, 413), answer


def test_a_trickled_body_gets_408_after_the_deadline(stack, admin):
    headers = {"Authorization": f"Bearer {admin.token}", "Content-Type": "application/json",
               "Content-Length": "1000"}
    paths = (INFER, "/v1/api/workspaces/list")
    # both at once, each on its own connection timed from its own send: the deadline is per request, and the test
    # waits it out once (5 s), not once per path
    with ThreadPoolExecutor(len(paths)) as pool:
        ends = list(pool.map(lambda path: _send_headers_then_wait(stack, path, headers, b"[{", wait=20), paths))
    for path, (status, seconds, answer) in zip(paths, ends, strict=True):
        assert status == 408, (path, answer)
        assert 4 <= seconds < 10, (path, seconds)  # the test stack's RAILYARD_GATEWAY__BODY_TIMEOUT is 5 s


def test_json_routes_take_small_bodies_only(stack, admin):
    big = json.dumps({"registry_id": str(uuid.uuid4()), "name": "x", "path": "x" * (3 * MiB), "workspace_id": 1,
                      "conversion": {"framework": "sklearn"}})
    for path in ("models/upload_from_registry", "workspaces/list"):  # the first was given the upload limit before
        response = httpx.post(f"{stack.api}/{path}", content=big, headers={
            "Authorization": f"Bearer {admin.token}", "Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large", response.text


def _zstd_bomb(decoded_mib: int) -> bytes:
    table = pa.table({"tensor": pa.array(np.zeros(decoded_mib * MiB // 8, dtype=np.float64))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_zstd_bomb_is_refused_413_without_decoding(stack, admin):
    bomb = _zstd_bomb(256)
    assert len(bomb) < 64 * 1024  # a few KB that decode to 256 MiB
    gateway = stack.state()["components"]["gateway"]["pid"]
    before = _rss_kib(gateway)
    for _ in range(5):
        response = httpx.post(f"{stack.base_url}{INFER}", content=bomb, timeout=30, headers={
            "Authorization": f"Bearer {admin.token}", "Content-Type": "application/vnd.apache.arrow.file"})
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large", response.text
        assert "decodes to" in response.json()["msg"]
    growth_mib = (_rss_kib(gateway) - before) / 1024
    assert growth_mib < 32, f"the gateway grew by {growth_mib:.0f} MiB"


def test_the_token_endpoint_is_rate_limited_per_source(stack):
    from concurrent.futures import ThreadPoolExecutor

    secrets = stack.secrets()
    sent = 150  # from one address, 16 at a time; the per-source bucket holds 50 and refills 10 a second
    with httpx.Client(base_url=stack.base_url, timeout=30, limits=httpx.Limits(max_connections=16),
                      transport=httpx.HTTPTransport(local_address="127.0.0.3")) as flood:
        def one(i: int) -> httpx.Response:
            # a made-up X-Forwarded-For on each request: no trusted proxies (the default), so still one bucket
            return flood.post(TOKEN_PATH, data={"grant_type": "client_credentials"},
                              auth=(f"nobody-{uuid.uuid4().hex[:6]}", "x"),
                              headers={"X-Forwarded-For": f"198.51.100.{i % 250}"})

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(one, range(sent)))
        elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 429}, statuses
    allowed = 50 + 10 * elapsed  # the most the bucket can have let through in that time
    assert statuses.count(429) >= max(1, sent - allowed - 1), (elapsed, statuses)
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    # another address is not slowed by it
    login = httpx.post(f"{stack.base_url}{TOKEN_PATH}", timeout=30,
                       auth=(secrets["client_id"], secrets["client_secret"]),
                       data={"grant_type": "password", "username": secrets["admin_username"],
                             "password": secrets["admin_password"]})
    assert login.status_code == 200, login.text


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(stack):
    from concurrent.futures import ThreadPoolExecutor

    sent = 150  # through the proxy (127.0.0.5, trusted by the test stack) for one client, with made-up prefixes
    with httpx.Client(base_url=stack.base_url, timeout=30, limits=httpx.Limits(max_connections=16),
                      transport=httpx.HTTPTransport(local_address="127.0.0.5")) as proxy:
        def one(i: int, forwarded: str, **more: str) -> httpx.Response:
            return proxy.post(TOKEN_PATH, data={"grant_type": "client_credentials"},
                              auth=(f"nobody-{uuid.uuid4().hex[:6]}", "x"),
                              headers={"X-Forwarded-For": forwarded, **more})

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            # the stack's proxy writes X-Forwarded-For: an RFC 7239 Forwarded header is the client's own, never read
            statuses = list(pool.map(lambda i: one(i, f"198.51.100.{i % 250}, 203.0.113.66",
                                                   Forwarded=f"for=198.51.100.{i % 250}").status_code, range(sent)))
        elapsed = time.monotonic() - started
        assert set(statuses) <= {401, 429}, statuses
        # the client the proxy appended is the key, not the prefix the client sent: its one bucket ran out
        assert statuses.count(429) >= max(1, sent - (50 + 10 * elapsed) - 1), (elapsed, statuses)
        # another client through the same proxy is not slowed by it (the proxy's own address is not the key)
        assert one(0, "203.0.113.77").status_code == 401


def test_an_attacker_locks_a_user_out_from_their_own_address_only(stack, admin):
    secrets = stack.secrets()
    email = f"lockout-{uuid.uuid4().hex[:8]}@example.com"
    admin.post("users/invite", {"email": email, "password": PASSWORD})

    def login(source: str, password: str) -> httpx.Response:
        with httpx.Client(base_url=stack.base_url, timeout=30,
                          transport=httpx.HTTPTransport(local_address=source)) as http:
            return http.post(TOKEN_PATH, auth=(secrets["client_id"], secrets["client_secret"]),
                             data={"grant_type": "password", "username": email, "password": password})

    for _ in range(5):  # the test stack locks after 5 failures
        attempt = login("127.0.0.2", "wrong-password")
        assert attempt.status_code == 401
    assert attempt.json()["error"] == "account_locked"
    assert login("127.0.0.2", PASSWORD).json()["error"] == "account_locked"  # the attacker's address is locked
    real = login("127.0.0.1", PASSWORD)  # the real user, elsewhere, is not
    assert real.status_code == 200, real.text
    assert client_for(stack).login(email, PASSWORD)["access_token"]


# What the schemathesis pass (`make fuzz-api`, docs/testing.md) found answered 500: each is now a typed 4xx.
BAD_VALUES = [
    ("workspaces/list_users", json.dumps({"workspace_id": 2**70}).encode(), 400, "workspace_id: "),  # > bigint
    ("assays/get_results", json.dumps({"assay_id": -(2**64)}).encode(), 400, "assay_id: "),
    ("workspaces/create", b'{"workspace_name": "fuzz-%s\\u0000"}', 400, "NUL"),  # PostgreSQL refuses it
    ("workspaces/create", b'{"workspace_name": "fuzz-%s\\ud800"}', 400, "not valid JSON"),  # a lone surrogate
    ("workspaces/create", b'{"workspace_name": "fuzz-%s\xed\xa0\x80"}', 400, "not valid JSON"),  # ...as raw bytes
    ("workspaces/list", b"[" * 5000, 400, "not valid JSON"),  # nested past any parser's depth
    ("pipelines/get_logs", b"[" * 5000, 400, "not valid JSON"),
    ("pipelines/infer/fuzz-1/fuzz", b"[" * 5000, 400, "not valid JSON"),  # the inference fast path's own parser
    ("pipelines/infer/fuzz-1/fuzz", b'[{"x": "\\ud800"}]', 400, "not valid JSON"),
    ("pipelines/infer/fuzz%00-1/fuzz", b'[{"x": 1}]', 404, "not found"),  # a NUL no command may carry
    ("pipelines/create", b'{"pipeline_id": "fuzz-%s", "workspace_id": 1, "definition": {"x": NaN}}', 400,
     "not valid JSON"),  # NaN is not JSON (it was stored as null)
    ("pipelines/create", b'{"pipeline_id": "fuzz-%s", "workspace_id": 1, "definition": {"x": ' + b"[" * 300 + b"]" * 300
     + b"}}", 400, "nested deeper"),  # valid JSON that pydantic could not serialize onto the bus
    ("pipelines/get_logs", b'{"pipeline_id": "x", "workspace_id": 1, "dataset": ' + b"[" * 300 + b"]" * 300 + b"}", 400,
     "recursion limit"),  # the gateway re-encoded it for the log store, and failed
    ("deployments/get_tags", '{"deployment": "fuzz-²"}'.encode(), 404, "not found"),  # '²'.isdigit(), int() fails
    ("pipelines/create", b'{"pipeline_id": "fuzz-%s", "workspace_id": 1, "definition": {"seed": '
     b'123456789012345678901234567890}}', 400, "definition.seed: the integer 123456789012345678901234567890 is "
     "beyond 64 bits"),  # orjson read it as 1.2345678901234568e+29, stored and answered so
]


def test_values_no_service_can_store_get_a_typed_4xx_and_change_nothing(stack, admin):
    mark = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {admin.token}", "Content-Type": "application/json"}
    for path, body, status, said in BAD_VALUES:
        body = body.replace(b"%s", mark.encode())
        response = httpx.post(f"{stack.api}/{path}", content=body, headers=headers, timeout=30)
        assert response.status_code == status and said in response.json()["msg"], (path, body[:60], response.text)
        assert response.json()["code"] == ("invalid_request" if status == 400 else "not_found")
    # deployment names the OIP and inference routes take
    for path in ("/v2/models/fuzz-%C2%B2", f"/v2/models/fuzz-{2**70}/ready", "/v2/models/fuzz%00-1"):
        response = httpx.get(f"{stack.base_url}{path}", headers=headers, timeout=30)
        assert response.status_code == 404 and response.json()["code"] == "not_found", (path, response.text)
    names = [w["name"] for w in admin.post("workspaces/list", {})["workspaces"]]
    assert not [name for name in names if mark in name]
    assert stack.health()[0] == 200


def test_integers_in_free_form_objects_come_back_exactly(stack, admin):
    """Every integer a JSON body may hold (64 bits, signed or unsigned) is stored and answered as it was sent, far
    beyond a double's 2**53; bigger ones are refused above (BAD_VALUES)."""
    name = f"bigints-{uuid.uuid4().hex[:8]}"
    workspace_id = admin.post("workspaces/create", {"workspace_name": name})["workspace_id"]
    numbers = {"seed": 2**64 - 1, "low": -(2**63), "odd": 2**53 + 1, "list": [2**63, -(2**53) - 3]}
    body = json.dumps({"pipeline_id": name, "workspace_id": workspace_id,
                       "definition": {"steps": [], "numbers": numbers}})
    headers = {"Authorization": f"Bearer {admin.token}", "Content-Type": "application/json"}
    created = httpx.post(f"{stack.api}/pipelines/create", content=body, headers=headers, timeout=30)
    assert created.status_code == 200, created.text
    read = httpx.post(f"{stack.api}/pipelines/get", headers=headers, timeout=30,
                      json={"pipeline_id": created.json()["pipeline_pk_id"]})
    assert json.loads(read.text)["versions"][-1]["definition"]["numbers"] == numbers


def _assay(pipeline: str, pipeline_id: int, workspace_id: int, change: dict) -> dict:
    body = {"name": "fuzz", "pipeline_id": pipeline_id, "pipeline_name": pipeline, "iopath": "output dense_1 0",
            "baseline": {"Static": {"values": [0.1, 0.2, 0.3, 0.4, 0.9]}}, "alert_threshold": 0.1,
            "window": {"pipeline": pipeline, "width": "1 hour"}, "summarizer": {}, "workspace_id": workspace_id}
    for key, value in change.items():
        if isinstance(value, dict) and key in ("window", "summarizer"):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


# Values a handler computed with, found by hand after a clean `make fuzz-api` (December 2026; the pass rarely gets past
# a 404 to reach them): each was a 500 (date arithmetic overflowing), a 504 with the assay already stored (a reply
# bigger than the bus carries), or an assay the scheduler could never advance. Now a 400 naming the field.
BAD_ASSAYS = [
    ({"window": {"width": "99999999999 days"}}, "window.width: the duration '99999999999 days' is too long: at most "
     "3650 days"),
    ({"window": {"interval": "99999999999 days"}}, "window.interval: the duration"),
    ({"window": {"start": "9999-12-31T23:30:00Z"}}, "window.start: 9999-12-31T23:30:00+00:00 is too late"),
    ({"window": {"start": "0001-01-01T00:00:00+05:00"}}, "window: start: 0001-01-01T00:00:00+05:00 is out of range "
     "once in UTC"),
    ({"run_until": "0001-01-01T00:00:00+05:00"}, "run_until: 0001-01-01T00:00:00+05:00 is out of range"),
    ({"baseline": {"Fixed": {"pipeline": "p", "start_at": "2020-01-01T00:00:00Z", "end_at": "9999-12-31T23:59:59Z"}}},
     "baseline.Fixed.end_at: 9999-12-31T23:59:59+00:00 is too late"),
    ({"summarizer": {"num_bins": 1_000_000}}, "summarizer.num_bins: Input should be less than or equal to 100"),
]


def test_times_and_sizes_a_handler_computes_with_get_a_400_naming_the_field_and_change_nothing(stack, admin):
    name = f"fuzz-assay-{uuid.uuid4().hex[:8]}"
    workspace_id = admin.post("workspaces/create", {"workspace_name": name})["workspace_id"]
    pipeline_id = admin.post("pipelines/create", {"pipeline_id": name, "workspace_id": workspace_id,
                                                  "definition": {}})["pipeline_pk_id"]
    headers = {"Authorization": f"Bearer {admin.token}"}
    for change, said in BAD_ASSAYS:
        body = _assay(name, pipeline_id, workspace_id, change)
        for route in ("assays/create", "assays/run_interactive_baseline", "assays/run_interactive"):
            response = httpx.post(f"{stack.api}/{route}", json=body, headers=headers, timeout=30)
            assert response.status_code == 400 and response.json()["code"] == "invalid_request", (route, response.text)
            assert response.json()["msg"].startswith(said), (route, change, response.text)
    assert admin.post("assays/list", {"pipeline_id": pipeline_id}) == []
    # the limits themselves are fine
    fine = _assay(name, pipeline_id, workspace_id, {"window": {"width": "3650 days"}, "summarizer": {"num_bins": 100}})
    assert admin.post("assays/create", fine)["assay_id"]
    # get_stats' `since` (seconds back from now) beyond 100 years overflowed before the deployment was looked up
    response = httpx.post(f"{stack.api}/deployments/get_stats", headers=headers, timeout=30, json={
        "deployment": "fuzz-1", "service": "PREDICTIONS_DATA", "since": 10**11})
    assert response.status_code == 400, response.text
    assert response.json()["msg"] == "since: Input should be less than or equal to 3155760000"
    # a log retention of 1e12 days was stored, then every log maintenance pass (every pipeline's) failed on its cut-off
    response = httpx.post(f"{stack.api}/pipelines/set_log_retention", headers=headers, timeout=30, json={
        "pipeline_id": name, "workspace_id": workspace_id, "retention_days": 1e12})
    assert response.status_code == 400, response.text
    assert response.json()["msg"] == "retention_days: Input should be less than or equal to 36525"
    assert stack.health()[0] == 200


def test_an_idle_keep_alive_connection_outlives_a_clients_reuse_window(stack):
    """httpx reuses an idle connection for up to 5 s; uvicorn's default closed it at 5 s, so a request sent as the
    gateway closed it got no answer at all (seen in CI: 'Server disconnected without sending a response'). The
    gateway keeps idle connections for `gateway.keep_alive` (75 s): a second request after 5.5 s idle is answered
    on the same socket."""
    request = b"GET /v1/api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(stack)), timeout=10) as sock:
        for attempt in range(2):
            if attempt:
                time.sleep(5.5)
            sock.sendall(request)
            answer = _one_response(sock)
            assert answer.startswith(b"HTTP/1.1 200"), (attempt, answer[:200])


def _one_response(sock: socket.socket) -> bytes:
    """One whole response (head and its Content-Length body): the head and the body are two writes, and a loaded
    machine may deliver them apart, so one recv() can leave the body to be read as the next response's start."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_one_source_cannot_take_every_connection(stack):
    """uvicorn keeps every connection it accepts (its `limit_concurrency` answers requests 503, everyone's, once the
    open connections reach it, idle ones included). The gateway counts connections per source address
    (`gateway.max_connections_per_source`, 256) and in all: one source's 257th connection is answered 503 and
    closed at once, while its 256 open ones and another source are served (services/gateway/connections.py)."""
    per_source = 256
    request = b"GET /v1/api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def ask(sock: socket.socket) -> bytes:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer

    held: list[socket.socket] = []
    try:
        for _ in range(per_source):
            held.append(socket.create_connection(("127.0.0.1", _port(stack)), timeout=10,
                                                 source_address=("127.0.0.7", 0)))
        assert ask(held[0]).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", _port(stack)), timeout=10,
                                      source_address=("127.0.0.7", 0)) as refused:
            answer = ask(refused)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"connection: close" in answer.lower()
        with socket.create_connection(("127.0.0.1", _port(stack)), timeout=10,
                                      source_address=("127.0.0.8", 0)) as other:
            assert ask(other).startswith(b"HTTP/1.1 200")
        assert ask(held[-1]).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
