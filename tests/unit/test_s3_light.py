"""shared/s3_light.py: the bucket calls a service makes without the minio SDK sign exactly as the SDK does, and
read S3's answers (exists, missing, created, already owned, anything else -> None/False for the SDK to handle)."""

from __future__ import annotations

import asyncio
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
