"""shared/s3_light.py: the bucket calls a service makes without the minio SDK sign exactly as the SDK does, and
read S3's answers (exists, missing, created, already owned, anything else -> None/False for the SDK to handle)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import weakref
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from minio.credentials import Credentials
from minio.signer import sign_v4_s3

from shared import s3_light
from shared.settings import S3Settings

SETTINGS = S3Settings(endpoint="127.0.0.1:18333", access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG",
                      region="eu-west-3")
WHEN = datetime(2026, 12, 1, 13, 45, 7, tzinfo=UTC)


@pytest.mark.parametrize(("method", "path", "body"), [("HEAD", "/railyard-artifacts", b""),
                                                      ("PUT", "/railyard-logs", b"<Create/>")])
def test_signature_is_the_sdks(method: str, path: str, body: bytes) -> None:
    ours = s3_light.signed_headers(SETTINGS, method, path, body, now=WHEN)
    unsigned = {k: v for k, v in ours.items() if k != "authorization"}
    theirs = sign_v4_s3(method=method, url=urlsplit(f"http://{SETTINGS.endpoint}{path}"), region=SETTINGS.region,
                        headers=dict(unsigned), credentials=Credentials(SETTINGS.access_key, SETTINGS.secret_key),
                        content_sha256=unsigned["x-amz-content-sha256"], date=WHEN)
    assert ours["authorization"] == theirs["Authorization"]


def test_anonymous_settings_send_no_signature() -> None:
    assert "authorization" not in s3_light.signed_headers(S3Settings(endpoint="h:1"), "HEAD", "/b", now=WHEN)


async def _answering(answers: dict[tuple[str, str], bytes]) -> tuple[asyncio.Server, S3Settings, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        method, path = head.split(b" ")[:2]
        writer.write(answers[(method.decode(), path.decode())])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{port}"}), seen


async def test_answers_are_read() -> None:
    error = b"<Error><Code>BucketAlreadyOwnedByYou</Code></Error>"
    denied = b"<Error><Code>AccessDenied</Code></Error>"
    server, settings, seen = await _answering({
        ("HEAD", "/there"): b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ("HEAD", "/missing"): b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ("HEAD", "/forbidden"): b"HTTP/1.1 403 Forbidden\r\n\r\n",
        ("PUT", "/new"): b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ("PUT", "/mine"): b"HTTP/1.1 409 Conflict\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error),
        ("PUT", "/denied"): b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                            % (len(denied), denied),
    })
    async with server:
        assert await s3_light.bucket_exists(settings, "there") is True
        assert await s3_light.bucket_exists(settings, "missing") is False
        assert await s3_light.bucket_exists(settings, "forbidden") is None
        assert await s3_light.make_bucket(settings, "new") is True
        assert await s3_light.make_bucket(settings, "mine") is True
        assert await s3_light.make_bucket(settings, "denied") is False
    assert all(b"authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/" in head for head in seen)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


async def _scripted(answers: list[bytes | None]) -> tuple[asyncio.Server, S3Settings, list[int]]:
    """A server answering its n-th connection with answers[n] (the last one from then on); None closes the
    connection without answering. Counts the connections."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen))
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        await reader.readuntil(b"\r\n\r\n")
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{port}"}), seen


def test_backoff_is_the_sdks() -> None:
    # minio's pool: urllib3 Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    from urllib3.util.retry import Retry

    sdk = Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    for attempt in range(1, s3_light.RETRIES + 1):
        sdk = sdk.increment(method="HEAD", url="/b", error=ConnectionResetError())
        assert s3_light.backoff(attempt) == pytest.approx(sdk.get_backoff_time())
    with pytest.raises(Exception, match="Max retries"):
        sdk.increment(method="HEAD", url="/b", error=ConnectionResetError())  # the SDK gives up after as many


async def test_a_refused_connection_is_retried_until_s3_listens() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{port}"})
    call = asyncio.create_task(s3_light.bucket_exists(settings, "there"))
    await asyncio.sleep(0.2)  # the first two attempts (no sleep between them) were refused
    assert not call.done()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(handle, "127.0.0.1", port):
        assert await asyncio.wait_for(call, 5) is True  # the third attempt, 0.4 s after the second


async def test_a_dropped_connection_and_a_503_are_retried() -> None:
    server, settings, seen = await _scripted([None, UNAVAILABLE, OK])
    async with server:
        assert await s3_light.bucket_exists(settings, "there") is True
    assert len(seen) == 3


async def test_retries_are_bounded_then_the_caller_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(s3_light, "BACKOFF_FACTOR", 0.001)
    server, settings, seen = await _scripted([UNAVAILABLE])
    async with server:
        assert await s3_light.bucket_exists(settings, "there") is None  # the SDK is asked then
        assert len(seen) == 1 + s3_light.RETRIES
        assert await s3_light.bucket_exists(settings, "there", retries=1) is None  # a health check's
        assert len(seen) == 1 + s3_light.RETRIES + 2
    server, settings, seen = await _scripted([None])
    async with server:
        with pytest.raises(ConnectionResetError):  # an OSError: objectstore.ensure_buckets falls back to the SDK
            await s3_light.make_bucket(settings, "new")
        assert len(seen) == 1 + s3_light.RETRIES


async def test_an_answer_that_is_not_http_is_not_retried() -> None:
    server, settings, seen = await _scripted([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"])
    async with server:
        with pytest.raises(s3_light.NotHttpAnswer):
            await s3_light.bucket_exists(settings, "there")
    assert len(seen) == 1 and issubclass(s3_light.NotHttpAnswer, OSError)


async def test_the_connection_is_closed_when_the_call_returns(monkeypatch) -> None:
    sockets = []
    real_open = asyncio.open_connection

    async def open_connection(*args, **kwargs):
        reader, writer = await real_open(*args, **kwargs)
        sockets.append(writer.get_extra_info("socket"))
        return reader, writer

    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    server, settings, _ = await _scripted([OK])
    async with server:
        assert await s3_light.bucket_exists(settings, "there") is True
        assert await s3_light.make_bucket(settings, "new") is True
    # closed, not merely asked to close: the socket is released before the call returns
    assert len(sockets) == 2 and all(sock.fileno() == -1 for sock in sockets)


async def test_a_cancel_that_comes_as_the_connection_closes_is_not_lost() -> None:
    """Every request ends in `_close` (its `finally`). Its wait for the close was asyncio.wait_for, which on Python
    3.11 returns instead of raising CancelledError when the close ends in the step a cancel comes (bpo-42130): the
    request then answered (or raised its error) to a caller that had been cancelled, which went on (the log store's
    stop waited for a retry loop while the stores failed)."""
    loop = asyncio.get_running_loop()
    aborted: list[bool] = []

    class Closing:
        transport = type("Transport", (), {"abort": lambda self: aborted.append(True)})()

        def close(self) -> None:
            pass

        async def wait_closed(self) -> None:
            closed = loop.create_future()
            loop.call_soon(closed.set_result, None)  # the socket closed, back on the loop ...
            loop.call_soon(closing.cancel)  # ... in the step the caller is cancelled
            await closed

    closing = asyncio.create_task(s3_light._close(Closing()))
    await asyncio.wait({closing}, timeout=3.0)
    assert closing.done() and closing.cancelled(), "the cancel was lost: the close returned"
    assert not aborted


async def test_an_object_put_signs_as_the_sdk_and_sends_the_bytes_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """put_object (MinioObjectStore.put_bytes up to 64 MiB: log segments): the key quoted as the SDK quotes it, the
    request signed as the SDK signs it, the body as given; the payload's SHA-256 in the signature unless the bytes
    travel over TLS or loopback (UNSIGNED-PAYLOAD, as the SDK over HTTPS); an answer other than 200 is False (the
    store asks the SDK)."""
    data = bytes(range(256)) * 4000  # above the size written apart from the head
    got: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        got.append((head, await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if len(got) <= 2 else
                     b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    settings = SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    key = "ws-1/my%20pipe line/2026/12/02/abc.e.parquet"
    async with server:
        assert s3_light.payload_travels_safely(settings)
        assert await s3_light.put_object(settings, "railyard-logs", key, data) is True
        monkeypatch.setattr(s3_light, "payload_travels_safely", lambda _: False)  # plain HTTP to another host
        assert await s3_light.put_object(settings, "railyard-logs", key, data) is True
        assert await s3_light.put_object(settings, "railyard-logs", key, data) is False
    for (head, body), payload in zip(got, ("UNSIGNED-PAYLOAD", hashlib.sha256(data).hexdigest()), strict=False):
        assert body == data
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        assert path == "/railyard-logs/ws-1/my%2520pipe%20line/2026/12/02/abc.e.parquet"
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert headers["x-amz-content-sha256"] == payload
        signed = {k: headers[k] for k in ("host", "x-amz-content-sha256", "x-amz-date")}
        when = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        theirs = sign_v4_s3(method=method, url=urlsplit(f"http://{settings.endpoint}{path}"), region=SETTINGS.region,
                            headers=signed, credentials=Credentials(SETTINGS.access_key, SETTINGS.secret_key),
                            content_sha256=payload, date=when)
        assert headers["authorization"] == theirs["Authorization"]


def test_which_payloads_travel_safely() -> None:
    for endpoint, secure, safe in (("127.0.0.1:8333", False, True), ("localhost:1", False, True),
                                   ("[::1]:8333", False, True), ("10.0.0.5:8333", False, False),
                                   ("s3.example.com", False, False), ("s3.example.com", True, True)):
        settings = S3Settings(endpoint=endpoint, secure=secure)
        assert s3_light.payload_travels_safely(settings) is safe, endpoint


@pytest.mark.parametrize("form", ["arrow", "memoryview", "small"])
async def test_a_put_sends_any_bytes_like_body_whole(monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """put_object takes the engine's log segment as the Arrow buffer Parquet wrote it to (no `bytes` copy): the
    same request as for `bytes` (Content-Length, the signed SHA-256 for plain HTTP to another host), the body whole."""
    import pyarrow as pa

    raw = bytes(range(256)) * (4 if form == "small" else 4000)
    data = memoryview(raw) if form == "memoryview" else pa.py_buffer(raw)
    got: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        got.append((head, await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    settings = SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    async with server:
        assert await s3_light.put_object(settings, "railyard-logs", "k", data) is True
        monkeypatch.setattr(s3_light, "payload_travels_safely", lambda _: False)
        assert await s3_light.put_object(settings, "railyard-logs", "k", data) is True
    for (head, body), payload in zip(got, ("UNSIGNED-PAYLOAD", hashlib.sha256(raw).hexdigest()), strict=True):
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
        assert body == raw and headers["content-length"] == str(len(raw))
        assert headers["x-amz-content-sha256"] == payload


async def _forget() -> None:
    """Close the kept connections and let the stand-in's handlers see it (no socket left to the next test)."""
    s3_light.forget_kept()
    await asyncio.sleep(0.05)


async def _keeping(closes_after: int | None = None, close_header: bool = False
                   ) -> tuple[asyncio.Server, S3Settings, list[list[bytes]]]:
    """An S3 stand-in that answers PUTs on kept-alive connections: one list of received bodies per connection.
    `closes_after`: it closes each connection after that many answers (as a server dropping an idle one);
    `close_header`: its answers say `Connection: close` (and it closes)."""
    connections: list[list[bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies: list[bytes] = []
        connections.append(bodies)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                bodies.append(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                             + (b"Connection: close\r\n" if close_header else b"") + b"\r\n")
                await writer.drain()
                if close_header or (closes_after is not None and len(bodies) >= closes_after):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, SETTINGS.model_copy(update={"endpoint": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"}), \
        connections


async def test_object_puts_share_a_kept_alive_connection() -> None:
    """A log segment's PUT goes on the connection the last one used (a new one cost SeaweedFS and the engine ~0.8
    ms of CPU a PUT); bucket calls still close theirs."""
    server, settings, connections = await _keeping()
    async with server:
        for number in range(3):
            assert await s3_light.put_object(settings, "railyard-logs", f"k{number}", b"x" * (number + 1)) is True
        assert connections == [[b"x", b"xx", b"xxx"]]
        await _forget()
        assert await s3_light.put_object(settings, "railyard-logs", "k3", b"y") is True
        assert len(connections) == 2
        await _forget()


async def test_two_puts_at_once_each_get_a_connection_and_both_are_kept() -> None:
    server, settings, connections = await _keeping()
    async with server:
        assert await asyncio.gather(*(s3_light.put_object(settings, "b", f"k{n}", b"z") for n in range(2))) == \
            [True, True]
        assert await asyncio.gather(*(s3_light.put_object(settings, "b", f"k{n}", b"z") for n in range(2))) == \
            [True, True]
        assert sorted(len(bodies) for bodies in connections) == [2, 2]
        await _forget()


async def test_a_kept_connection_the_server_closed_is_replaced_at_once_not_retried(monkeypatch) -> None:
    """The server drops each connection after one answer (as an idle timeout would): the next PUT's send or read
    on the kept connection fails before any answer, and the PUT goes again at once on a new connection without
    spending a retry (retries=0 still stores it, no backoff sleep)."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args):
        slept.append(delay)
        await real_sleep(delay, *args)

    monkeypatch.setattr(s3_light.asyncio, "sleep", sleep)
    server, settings, connections = await _keeping(closes_after=1)
    async with server:
        for number in range(3):
            status, _ = await s3_light.request(settings, "PUT", f"/b/k{number}", b"v%d" % number, retries=0,
                                               keep=True)
            assert status == 200
        await real_sleep(0.05)  # the server's close of the last one arrives: it is not reused, but not an error
        assert (await s3_light.request(settings, "PUT", "/b/k3", b"v3", retries=0, keep=True))[0] == 200
    assert [bodies for bodies in connections if bodies] == [[b"v0"], [b"v1"], [b"v2"], [b"v3"]]
    assert not slept
    await _forget()


async def test_a_stale_connection_that_fails_again_is_an_attempt_as_before(monkeypatch) -> None:
    """The new connection after a stale one failing too (S3 gone) is a connection error as without keep-alive: the
    retries and then the error, not a loop."""
    tries: list[bool] = []
    real_attempt = s3_light._attempt

    async def attempt(*args, fresh: bool = False):
        tries.append(fresh)
        return await real_attempt(*args, fresh=fresh)

    monkeypatch.setattr(s3_light, "_attempt", attempt)
    server, settings, _ = await _keeping(closes_after=1)
    async with server:
        assert await s3_light.put_object(settings, "b", "k", b"1") is True
        server.close()  # S3 gone; the kept connection still looks alive (the stand-in closes it after its answer)
        tries.clear()
        with pytest.raises(ConnectionRefusedError):  # not the timeout (an OSError too) of a loop
            await s3_light.request(settings, "PUT", "/b/k", b"2", retries=0, keep=True)
        assert tries == [False, True]  # the kept connection, found closed; one new one, refused
    await _forget()


async def test_connections_are_not_kept_when_the_server_says_close_or_when_idle_too_long(monkeypatch) -> None:
    server, settings, connections = await _keeping(close_header=True)
    async with server:
        for number in range(2):
            assert await s3_light.put_object(settings, "b", f"k{number}", b"c") is True
        assert [len(bodies) for bodies in connections] == [1, 1]
        assert not any(s3_light._kept.get(asyncio.get_running_loop(), {}).values())
    server, settings, connections = await _keeping()
    monkeypatch.setattr(s3_light, "KEEP_IDLE_FOR", 0.0)
    async with server:
        for number in range(2):
            assert await s3_light.put_object(settings, "b", f"k{number}", b"c") is True
        assert [len(bodies) for bodies in connections] == [1, 1]
    await _forget()


async def test_no_more_than_keep_idle_connections_are_kept() -> None:
    """Three PUTs at once need three connections; two are kept (KEEP_IDLE), the third is closed, and the next three
    at once reuse the two and open one."""
    server, settings, connections = await _keeping()
    async with server:
        for _ in range(2):
            assert await asyncio.gather(*(s3_light.put_object(settings, "b", f"k{n}", b"z") for n in range(3))) == \
                [True] * 3
            assert len(s3_light._kept[asyncio.get_running_loop()][(settings.endpoint, False)]) == s3_light.KEEP_IDLE
        assert len(connections) == 4 and sum(len(bodies) for bodies in connections) == 6
        await _forget()


async def test_an_answer_of_unknown_length_or_http_1_0_is_not_kept() -> None:
    """The next answer on a connection begins where this one ends: only an HTTP/1.1 answer with a Content-Length,
    read whole, leaves the connection ready for the next PUT."""
    denied = b"<Error><Code>AccessDenied</Code></Error>"
    server, settings, _ = await _answering({
        ("PUT", "/b/chunked"): b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                               % (len(denied), denied),
        ("PUT", "/b/unframed"): b"HTTP/1.1 200 OK\r\n\r\n",
        ("PUT", "/b/old"): b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ("PUT", "/b/framed"): b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    })
    async with server:
        for key in ("chunked", "unframed", "old"):
            await s3_light.request(settings, "PUT", f"/b/{key}", b"x", retries=0, keep=True)
            assert not any(s3_light._kept.get(asyncio.get_running_loop(), {}).values()), key
        await s3_light.request(settings, "PUT", "/b/framed", b"x", retries=0, keep=True)
        assert any(s3_light._kept[asyncio.get_running_loop()].values())  # what the others are told apart from
        await _forget()


async def test_the_connections_of_a_closed_loop_are_let_go() -> None:
    """A kept connection holds its event loop: a loop closed with connections kept (`asyncio.run` of one call, a
    thread's loop) stayed in `_kept` with its sockets for the life of the process. The next connection kept lets
    it go, and the loop and its sockets are collected."""
    server, settings, connections = await _keeping()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def put_elsewhere() -> bool:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await s3_light.put_object(settings, "b", "elsewhere", b"e")

    async with server:
        assert await asyncio.to_thread(asyncio.run, put_elsewhere()) is True
        assert await s3_light.put_object(settings, "b", "here", b"h") is True
        gc.collect()
        assert loops[0]() is None  # and with it its transports (each holds it): their sockets closed
        assert list(s3_light._kept) == [asyncio.get_running_loop()]
        assert [len(bodies) for bodies in connections] == [1, 1]
        await _forget()
