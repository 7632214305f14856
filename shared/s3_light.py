"""The two S3 calls every service makes at start and on health checks (is a bucket there, create it), signed
here with AWS Signature V4 over an asyncio connection, so that a service that stores no object while idle does
not load the minio SDK and what it imports (urllib3, pycryptodome with cffi and pycparser, argon2-cffi: ~7 MiB
of RSS per process, docs/performance.md "Memory"). `shared.objectstore.MinioObjectStore` loads the SDK on its
first real object call, and falls back to it whenever an answer here is not one of the few it understands, or
S3 could still not be reached after the retries the SDK would have made (`request`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import ssl
import time
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.settings import S3Settings

if TYPE_CHECKING:  # not imported here: services that store no object do not load pyarrow for this module
    import pyarrow as pa

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CREATE_BODY = ('<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>")


def _signing_key(secret: str, day: str, region: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signed_headers(settings: S3Settings, method: str, path: str, body: bytes | memoryview = b"",
                   now: datetime | None = None, payload_sha256: str | None = None) -> dict[str, str]:
    """The headers of a path-style request to `settings.endpoint` (`path` already URL-safe: bucket names are),
    signed with AWS Signature V4 when the settings carry credentials (anonymous otherwise, as the SDK does).
    `payload_sha256`: the body's SHA-256 (hex) when the caller has it."""
    now = now or datetime.now(UTC)
    payload = payload_sha256 or hashlib.sha256(body).hexdigest()
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": settings.endpoint, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    if not settings.access_key:
        return headers
    names = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload])
    scope = f"{day}/{settings.region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(_signing_key(settings.secret_key, day, settings.region), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={settings.access_key}/{scope}, SignedHeaders={names}, "
                                f"Signature={signature}")
    return headers


# Retries as the minio SDK's urllib3 pool makes them (`Retry(total=5, backoff_factor=0.2, status_forcelist=[500,
# 502, 503, 504])`): up to 5 more attempts after a connection error or one of those statuses, sleeping 0, 0.4, 0.8,
# 1.6 and 3.2 s between them, all within the call's timeout. An answer that is not HTTP and a TLS error are not
# retried (another attempt would meet the same), and what is still failing after the retries goes to the caller,
# which falls back to the SDK as before.
RETRIES = 5
BACKOFF_FACTOR = 0.2
RETRY_STATUSES = frozenset({500, 502, 503, 504})
CLOSE_TIMEOUT = 1.0  # waiting for our side of the connection to close; then the socket is aborted


# Object PUTs (`put_object`: an engine's log segments, two a second per replica at batch 1, up to two at once) go on
# kept-alive connections: a new connection a PUT cost SeaweedFS ~0.45 ms of CPU (its accept, TLS-less HTTP state,
# close) and the caller ~0.35 ms (docs/performance.md items 81 and 83). At most KEEP_IDLE idle ones per event loop and
# endpoint, each reused for KEEP_IDLE_FOR seconds after its last answer at most (an older one is closed: servers drop
# idle connections, SeaweedFS's Go server on its own timeouts). A kept connection the server closed meanwhile fails
# before any answer: the request is sent again at once on a new connection (`StaleConnection`, not one of the
# retries: a PUT of the same bytes under the same key is idempotent). Other requests close their connection.
KEEP_IDLE = 2
KEEP_IDLE_FOR = 10.0
_kept: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, bool], list[tuple[
    float, asyncio.StreamReader, asyncio.StreamWriter]]]] = weakref.WeakKeyDictionary()


class NotHttpAnswer(OSError):
    """S3's endpoint answered something that is not HTTP: not retried."""


class StaleConnection(ConnectionResetError):
    """A kept-alive connection failed before its answer began (the server had closed it while idle)."""


def _take_kept(settings: S3Settings) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """An idle kept connection to `settings.endpoint` on this loop (the one used last), or None; any too old or
    already closed by the server is closed here."""
    idle = _kept.get(asyncio.get_running_loop(), {}).get((settings.endpoint, settings.secure))
    now = time.monotonic()
    while idle:
        since, reader, writer = idle.pop()
        if now - since < KEEP_IDLE_FOR and not reader.at_eof() and not writer.is_closing():
            return reader, writer
        writer.transport.abort()
    return None


def _keep(settings: S3Settings, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Keep a connection whose answer was read whole for the next PUT; False when KEEP_IDLE are kept already.
    The connections of loops closed meanwhile are let go: each holds its loop, so `_kept`'s weak key alone never
    freed a closed loop nor its sockets (a process running loop after loop: `asyncio.run` a call, tests); garbage
    collection then closes them (their transports cannot be closed through a closed loop)."""
    try:
        closed = [loop for loop in list(_kept.keys()) if loop.is_closed()]
    except RuntimeError:  # another thread's loop added itself meanwhile: let them go next time
        closed = []
    for loop in closed:
        _kept.pop(loop, None)
    idle = _kept.setdefault(asyncio.get_running_loop(), {}).setdefault((settings.endpoint, settings.secure), [])
    if len(idle) >= KEEP_IDLE or reader.at_eof() or writer.is_closing():
        return False
    idle.append((time.monotonic(), reader, writer))
    return True


def forget_kept() -> None:
    """Close every kept connection of this loop (tests; a service's loop keeps its own until the process ends)."""
    for idle in _kept.pop(asyncio.get_running_loop(), {}).values():
        for _, _, writer in idle:
            writer.transport.abort()


def backoff(attempt: int) -> float:
    """Seconds to sleep before retry number `attempt` (1-based), as urllib3 computes it for the SDK."""
    return 0.0 if attempt <= 1 else BACKOFF_FACTOR * 2 ** (attempt - 1)


async def request(settings: S3Settings, method: str, path: str, body: bytes | memoryview | pa.Buffer = b"",
                  timeout: float = 10.0, retries: int = RETRIES, extra: dict[str, str] | None = None,
                  payload_sha256: str | None = None, keep: bool = False) -> tuple[int, bytes]:
    """An HTTP/1.1 request (connection closed after it, and awaited closed; `keep`: on a kept-alive connection,
    KEEP_IDLE); returns the status and the body (HEAD: empty). Connection errors and 500/502/503/504 are retried as
    the SDK retries them (`retries` times, `backoff`), within `timeout` overall; the last error is raised, or the
    last such status returned. A kept connection the server had closed is not an attempt: the request goes again
    at once on a new one."""
    async with asyncio.timeout(timeout):
        attempt = 0
        while True:
            try:
                try:
                    status, answer = await _attempt(settings, method, path, body, extra, payload_sha256, keep)
                except StaleConnection:
                    status, answer = await _attempt(settings, method, path, body, extra, payload_sha256, keep,
                                                    fresh=True)
            except (NotHttpAnswer, ssl.SSLError):
                raise
            except OSError:
                if attempt >= retries:
                    raise
            else:
                if status not in RETRY_STATUSES or attempt >= retries:
                    return status, answer
            attempt += 1
            await asyncio.sleep(backoff(attempt))


async def _attempt(settings: S3Settings, method: str, path: str, body: bytes | memoryview | pa.Buffer,
                   extra: dict[str, str] | None = None, payload_sha256: str | None = None, keep: bool = False,
                   fresh: bool = False) -> tuple[int, bytes]:
    kept = _take_kept(settings) if keep and not fresh else None
    if kept is not None:
        reader, writer = kept
    else:
        host, _, port = settings.endpoint.rpartition(":")
        if not host or not port.isdigit():
            host, port = settings.endpoint, "443" if settings.secure else "80"
        context = ssl.create_default_context() if settings.secure else None
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=context)
    answered = kept_now = False
    try:
        view = memoryview(body).cast("B")  # any bytes-like body (an Arrow buffer: a log segment), not copied
        headers = signed_headers(settings, method, path, view, payload_sha256=payload_sha256) | (extra or {}) | {
            "content-length": str(view.nbytes)} | ({} if keep else {"connection": "close"})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        if view.nbytes > 65536:  # not copied into one string with the head (uvloop's transport keeps the view)
            writer.write(head.encode())
            writer.write(view)
        else:
            writer.write(head.encode() + view)
        try:
            await writer.drain()
            status_line = await reader.readline()
        except OSError as exc:
            if kept is not None:  # the server closed the kept connection while it was idle
                raise StaleConnection(f"S3 had closed the kept connection: {exc}") from exc
            raise
        if not status_line:  # closed before answering: a connection error, as urllib3 counts it
            if kept is not None:
                raise StaleConnection("S3 had closed the kept connection")
            raise ConnectionResetError("S3 closed the connection without answering")
        answered = True
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise NotHttpAnswer(f"not an HTTP answer from S3: {status_line[:80]!r}")
        length, chunked, closes = None, False, False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name.strip().lower() == "connection" and "close" in value.lower():
                closes = True
        if method == "HEAD":
            return int(parts[1]), b""
        if chunked:  # small error documents only: read to the end and keep the raw text (codes are searched)
            return int(parts[1]), await reader.read(65536)
        if length is None:
            return int(parts[1]), await reader.read(65536)
        answer = await reader.readexactly(length)
        # the answer read whole, its length known: the connection can carry the next PUT
        kept_now = keep and not closes and parts[0] == b"HTTP/1.1" and _keep(settings, reader, writer)
        return int(parts[1]), answer
    except asyncio.IncompleteReadError as exc:  # closed in the middle of the answer
        if kept is not None and not answered:
            raise StaleConnection("S3 had closed the kept connection") from exc
        raise ConnectionResetError("S3 closed the connection in the middle of its answer") from exc
    finally:
        if not kept_now:
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close the connection and wait until it is closed (the socket released), at most CLOSE_TIMEOUT: a peer that
    stopped reading, or a TLS close that is not answered, gets the connection aborted instead. Bounded with
    asyncio.timeout, not wait_for: on Python 3.11 wait_for returns instead of raising CancelledError when the close
    ends in the step a cancel comes (bpo-42130), and every request closes here: the cancel of its caller was lost
    (the log store's stop, cancelling a flush's PUT or its probe of the stores while they fail, then waited for a
    retry loop that went on)."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError):  # the answer is read already: how the close ends changes nothing
        writer.transport.abort()


async def bucket_exists(settings: S3Settings, bucket: str, retries: int = RETRIES) -> bool | None:
    """True or False when S3 says so (200, 404); None for any other answer (the caller asks the SDK). A health check
    passes fewer `retries`: it reports an S3 that cannot be reached within its own short deadline."""
    status, _ = await request(settings, "HEAD", f"/{bucket}", retries=retries)
    return True if status == 200 else False if status == 404 else None


async def make_bucket(settings: S3Settings, bucket: str) -> bool:
    """Create a bucket; True when it exists now (created, or already owned as the SDK's callers accept), False
    for any other answer (the caller asks the SDK, which raises the S3 error)."""
    body = b"" if settings.region in ("", "us-east-1") else _CREATE_BODY.format(region=settings.region).encode()
    status, answer = await request(settings, "PUT", f"/{bucket}", body)
    return status == 200 or (status == 409 and (b"BucketAlreadyOwnedByYou" in answer
                                               or b"BucketAlreadyExists" in answer))


UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def payload_travels_safely(settings: S3Settings) -> bool:
    """Whether a PUT's body may go without its SHA-256 in the signature (`UNSIGNED-PAYLOAD`, as the minio SDK sends
    over HTTPS): over TLS, which protects it on the way, or to a loopback address, where it never leaves the host.
    Plain HTTP to another host keeps the signed hash, which is then what protects the bytes in transit. The headers
    are signed either way. (The hash is ~0.6 ms of CPU per MB: 1,000 logged ccfraud rows are ~120 KB.)"""
    if settings.secure:
        return True
    host = settings.endpoint.rpartition(":")[0] or settings.endpoint
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def put_object(settings: S3Settings, bucket: str, key: str, data: bytes | memoryview | pa.Buffer,
                     content_type: str = "application/octet-stream") -> bool:
    """Store `data` (any bytes-like object: an Arrow buffer is sent from where it is, not copied) under `key` in
    one signed PUT (the payload's SHA-256 signed unless `payload_travels_safely`,
    computed in a worker thread: hashlib leaves the GIL, so the caller's event loop goes on); True when S3 stored
    it (200), False for any other answer (the caller asks the SDK, which raises the S3 error). Connection errors are
    retried as in `request` (a PUT of the same bytes under the same key is idempotent), then raised. No SDK, no
    thread for the transfer, one PUT whatever the size (the SDK goes multipart above 5 MiB), on a kept-alive
    connection (KEEP_IDLE)."""
    if payload_travels_safely(settings):
        digest = UNSIGNED_PAYLOAD
    else:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    path = f"/{bucket}/{quote(key, safe='/')}"
    status, _ = await request(settings, "PUT", path, data, timeout=60.0 + memoryview(data).nbytes / 1_000_000,
                              extra={"content-type": content_type}, payload_sha256=digest, keep=True)
    return status == 200
