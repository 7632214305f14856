"""Request body limits of the gateway: how large a body may be and how long a client may take to send it.

Every route gets the limit of what it carries: a JSON command `max_json_bytes` (small), a data body (inference,
OIP, dataset rows) `max_body_bytes`, a multipart upload `max_upload_bytes`; the image routes' multipart body (an
image and its JSON metadata) `monitoring.max_image_bytes` plus `max_json_bytes`, their JSON body `max_json_bytes`.
A body above its limit is refused with 413 at once from Content-Length, or as soon as a chunked body passes it, so
it is never read whole. A body must arrive within `body_timeout` seconds (uploads: with no gap longer than that),
else 408: a client trickling bytes cannot hold a request open forever. Nothing here reads a body before the route
has checked the token: the limits wrap `receive`, which the route calls only after authenticating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.gateway.errors import send_error, shape_of
from shared.errors import PayloadTooLarge, RailyardError, RequestTimeout

API = "/v1/api"
# multipart uploads: large, and as slow as the client's link (a gap deadline, no total deadline)
UPLOAD_PATHS = {f"{API}/models/upload_and_convert", f"{API}/models/upload_stream", f"{API}/datasets/upload_file",
                f"{API}/files/upload", f"{API}/orchestration/upload"}
# data bodies (tables and tensors): up to max_body_bytes
DATA_PATHS = {f"{API}/datasets/upload_rows"}
DATA_PREFIXES = (f"{API}/pipelines/infer/", "/v2/models/")
# seed 003's image routes: JSON (the image base64) or multipart (the image as a file part, up to max_image_bytes)
IMAGE_UPLOAD_PATHS = {f"{API}/deployments/{verb}" for verb in ("predict", "predict_bytes", "monitor", "monitor_bytes")}


class Limits:
    """The body limits of one gateway (from GatewaySettings)."""

    def __init__(self, max_json_bytes: int, max_body_bytes: int, max_upload_bytes: int, body_timeout: float,
                 max_image_bytes: int = 0) -> None:
        self.max_json_bytes = max_json_bytes
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.body_timeout = body_timeout
        self.max_image_bytes = max_image_bytes

    def for_path(self, path: str, multipart: bool = False) -> tuple[int, bool]:
        """(byte limit, is an upload) of a request path (`multipart`: its body is multipart/form-data)."""
        if path in UPLOAD_PATHS:
            return self.max_upload_bytes, True
        if multipart and path in IMAGE_UPLOAD_PATHS:
            return self.max_image_bytes + self.max_json_bytes, True
        if path in DATA_PATHS or path.startswith(DATA_PREFIXES):
            return self.max_body_bytes, False
        return self.max_json_bytes, False


def is_multipart(scope: dict) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"multipart/form-data"
    return False


def declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes")


async def read_body(receive: Callable, limit: int, timeout: float) -> bytes | None:
    """The whole body, read within `timeout` seconds and refused past `limit` bytes (the rest is never read);
    None when the client went away."""
    return await read_rest(receive, [], 0, limit, asyncio.get_running_loop().time() + timeout, timeout)


async def read_rest(receive: Callable, chunks: list[bytes], received: int, limit: int, deadline: float,
                    timeout: float) -> bytes | None:
    """read_body's loop from `chunks` (`received` bytes) on, until the loop time `deadline` (services/gateway/body.py
    reads the first chunk its own way)."""
    try:
        # one deadline for the whole body: wait_for per chunk made a task per chunk (~6 us each; a 600 KB body
        # comes in ~10 chunks of uvicorn's 64 KB flow-control window)
        async with asyncio.timeout_at(deadline):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None


class BodyLimits:
    """ASGI middleware applying `Limits` to every request of the application behind it."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, upload = self.limits.for_path(scope["path"], is_multipart(scope))
        shape = shape_of(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, too_large(limit), shape, close=True)
            return
        timeout = self.limits.body_timeout
        deadline = time.monotonic() + timeout
        received = 0
        started = refused = False

        async def limited_receive() -> dict:
            nonlocal received, refused, deadline
            if refused:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return await refuse(RequestTimeout(f"the request body did not arrive within {timeout:g} s"
                                                   + (" of the last bytes" if upload else "")))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if upload:
                    deadline = time.monotonic() + timeout
                if received > limit:
                    return await refuse(too_large(limit))
            return message

        async def refuse(exc: RailyardError) -> dict:
            # answer now and tell the app the client went away; whatever it answers later is dropped
            nonlocal refused
            if not started:
                await send_error(send, exc, shape, close=True)
            refused = True
            return {"type": "http.disconnect"}

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
