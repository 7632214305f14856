"""The HTTP server Label Studio talks to (its ML backend protocol, as Label Studio 1.23 speaks it).

    GET  /health, GET /          {"status": "UP", "model_class": ...}
    POST /setup                  {project, schema, hostname, access_token, extra_params} -> {"model_version"}
    POST /predict                {tasks, project, label_config, params} -> {"results": [one per task], "model_version"}
    POST /webhook                {action, project: {id, label_config}, task?, annotation?, ...}: training events
                                 start a background `fit` (201 {"status": "ok", "job_id"}), others are ignored (200)
    POST /train                  legacy: {annotations: [tasks with annotations], project, label_config}
    GET  /versions               ?project=<id> (or a JSON body naming it) -> {"versions", "current_version", "runs"};
                                 without a project (what Label Studio 1.23 sends): every project's versions
    GET  /metrics                {}

Label Studio sends `project` as `<id>.<created timestamp>`; Label Studio's health check waits 1 s and its webhook
1 s, so both answer at once and `fit` never runs inside a request. Errors answer `{"code", "msg"}` with a 4xx for a
bad request and a 5xx when the model itself failed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from railyard_ml.backend import Backend, project_id_of
from railyard_ml.errors import InvalidRequest, MLBackendError, PayloadTooLarge, Unauthorized
from railyard_ml.label_config import parse_config
from railyard_ml.model import LabelStudioMLBase
from railyard_ml.store import claim_model_dir

logger = logging.getLogger(__name__)

MAX_BODY = int(os.getenv("RAILYARD_ML_MAX_BODY", str(256 * 1024 * 1024)))


class _Body(BaseModel):
    # Label Studio adds fields between versions; unknown ones are ignored, known ones are typed
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Body):
    """POST /setup."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    project: str | int
    schema_: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class PredictRequest(_Body):
    """POST /predict."""

    tasks: list[dict]
    project: str | int | None = None
    label_config: str | None = None
    params: dict | None = None


class WebhookProject(_Body):
    id: int | str
    label_config: str | None = None


class WebhookRequest(_Body):
    """POST /webhook (Label Studio's webhook payload)."""

    action: str
    project: WebhookProject | None = None


class TrainRequest(_Body):
    """POST /train (legacy training call: every annotated task at once)."""

    annotations: list[dict]
    project: str | int | None = None
    label_config: str | None = None
    params: dict | None = None


async def _body(request: Request, model: type[BaseModel]) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(bytes(raw) or b"null")
    except ValueError:
        raise InvalidRequest("the body must be JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in exc.errors()[:5])
        raise InvalidRequest(f"{problems}") from None


def _check_config(label_config: str | None) -> None:
    if label_config:
        parse_config(label_config)  # raises InvalidLabelConfig with the parser's reason


def init_app(model_class: type[LabelStudioMLBase], basic_auth_user: str | None = None,
             basic_auth_pass: str | None = None, model_dir: str | Path | None = None, **init_kwargs: Any) -> Starlette:
    """The ASGI app serving `model_class` (as label_studio_ml.api.init_app; run it with uvicorn)."""
    user = basic_auth_user or os.getenv("ML_SERVER_BASIC_AUTH_USER") or os.getenv("BASIC_AUTH_USER")
    password = basic_auth_pass or os.getenv("ML_SERVER_BASIC_AUTH_PASS") or os.getenv("BASIC_AUTH_PASS")
    if bool(user) != bool(password):
        raise ValueError("basic auth needs both a user and a password")
    backend = Backend(model_class, model_dir or os.getenv("MODEL_DIR") or ".", **init_kwargs)

    def authorized(request: Request) -> bool:
        if not user:
            return True
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given_user, _, given_password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given_user.encode(), user.encode()) & hmac.compare_digest(
            given_password.encode(), password.encode())

    def endpoint(handler: Callable[[Request], Awaitable[Any]], status: int = 200) -> Callable:
        async def run(request: Request) -> Response:
            try:
                if not authorized(request):
                    raise Unauthorized("this ML backend needs HTTP basic auth (the user and password it was "
                                       "started with)")
                answer = await handler(request)
            except MLBackendError as exc:
                headers = {"WWW-Authenticate": 'Basic realm="ML backend"'} if exc.status == 401 else None
                return JSONResponse({"code": exc.code, "msg": exc.msg}, status_code=exc.status, headers=headers)
            except Exception as exc:  # the user's model raised: say what, not where
                logger.exception("%s %s failed", request.method, request.url.path)
                return JSONResponse({"code": "model_error", "msg": f"{type(exc).__name__}: {exc}"}, status_code=500)
            if isinstance(answer, Response):
                return answer
            return JSONResponse(answer, status_code=status)

        return run

    async def health(request: Request) -> dict:
        return {"status": "UP", "model_class": model_class.__name__, "model_dir": str(backend.model_dir)}

    async def metrics(request: Request) -> dict:
        return {}

    async def setup(request: Request) -> dict:
        body = await _body(request, SetupRequest)
        _check_config(body.schema_)
        version = await backend.setup(body.project, body.schema_, body.hostname, body.access_token,
                                      body.extra_params)
        return {"model_version": version}

    async def predict(request: Request) -> dict:
        body = await _body(request, PredictRequest)
        _check_config(body.label_config)
        return await backend.predict(body.tasks, body.project, body.label_config, body.params or {})

    async def webhook(request: Request) -> Response:
        body = await _body(request, WebhookRequest)
        if body.action not in model_class.TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, status_code=200)
        if body.project is None:
            raise InvalidRequest(f"a {body.action} webhook must carry the project ({{'id': ..., 'label_config': ...}})")
        project_id = project_id_of(body.project.id)
        _check_config(body.project.label_config)
        data = body.model_dump(exclude={"action"})
        for key in ("task", "annotation"):  # Label Studio sends objects (a list of them for the bulk events)
            value = data.get(key)
            if value is not None and not all(isinstance(item, dict) for item in (
                    value if isinstance(value, list) else [value])):
                raise InvalidRequest(f"a {body.action} webhook's {key!r} must be an object (or a list of objects), "
                                     f"as Label Studio sends it; got {type(value).__name__}")
        await run_in_threadpool(backend.record_annotations, body.action, data, project_id)
        if not backend.trains:
            return JSONResponse({"status": "ok", "detail": f"{model_class.__name__} has no fit()"}, status_code=200)
        job_id = backend.submit_training(project_id, body.action, data, body.project.label_config)
        return JSONResponse({"status": "ok", "job_id": job_id}, status_code=201)

    async def train(request: Request) -> Response:
        body = await _body(request, TrainRequest)
        if not body.annotations:
            raise InvalidRequest("no annotations to train on: 'annotations' is empty")
        if any("id" not in task for task in body.annotations):
            raise InvalidRequest("each item of 'annotations' must be a task with its 'id' and 'annotations'")
        _check_config(body.label_config)
        project_id = project_id_of(body.project) if body.project not in (None, "") else ""
        await run_in_threadpool(backend.store.replace_tasks, project_id, body.annotations)
        job_id = backend.submit_training(project_id, "START_TRAINING", {"project": {"id": project_id}},
                                         body.label_config)
        return JSONResponse({"job": job_id}, status_code=201)

    async def versions(request: Request) -> dict:
        project = request.query_params.get("project")
        if project is None:
            raw = await request.body()
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw) if raw else None
                project = parsed.get("project") if isinstance(parsed, dict) else None
        if project in (None, ""):
            # Label Studio 1.23 builds a body naming the project but sends GET /versions without it
            return await run_in_threadpool(backend.all_versions)
        return await run_in_threadpool(backend.versions, project_id_of(project))

    async def lifespan(app: Starlette):  # noqa: ANN202
        # one serving process a model directory (ModelDirInUse otherwise): the next line would take another's
        # queued and running runs for interrupted
        release = await run_in_threadpool(claim_model_dir, backend.model_dir)
        try:
            # runs a previous process left queued or running never end otherwise: their queue was in its memory
            interrupted = await run_in_threadpool(backend.store.end_interrupted)
            if interrupted:
                logger.warning("%d training run(s) were queued or running when the backend last stopped; recorded "
                               "as failed (interrupted)", interrupted)
            yield
            with contextlib.suppress(TimeoutError):
                await backend.wait_idle(timeout=float(os.getenv("RAILYARD_ML_SHUTDOWN_WAIT", "60")))
        finally:
            release()

    app = Starlette(
        routes=[
            Route("/", endpoint(health), methods=["GET"]),
            Route("/health", endpoint(health), methods=["GET"]),
            Route("/metrics", endpoint(metrics), methods=["GET"]),
            Route("/setup", endpoint(setup), methods=["POST"]),
            Route("/predict", endpoint(predict), methods=["POST"]),
            Route("/webhook", endpoint(webhook), methods=["POST"]),
            Route("/train", endpoint(train), methods=["POST"]),
            Route("/versions", endpoint(versions), methods=["GET", "POST"]),
        ],
        lifespan=contextlib.asynccontextmanager(lifespan),
    )
    app.state.backend = backend
    return app
