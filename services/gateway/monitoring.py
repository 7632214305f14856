"""Deployment management routes of the gateway (seed 003's `Deployment` methods, under /v1/api/deployments/),
forwarded as commands to the monitoring service like every other JSON route.

The image routes (predict, predict_bytes, monitor, monitor_bytes) also take a multipart/form-data body: an `image`
file part (the PNG/JPEG bytes, up to `monitoring.max_image_bytes`) and a `metadata` part holding the JSON body's other
fields. The image is staged in the monitoring bucket under the caller's user id (`staging/<user id>/<uuid>`; a task
run's token also binds its workspace: `staging/<user id>/ws-<id>/<uuid>`) and the command carries its key instead of
the bytes; the monitoring service reads it (only for that user and token scope), checks it and deletes it. The
gateway deletes it too once the command has answered, whatever the answer (a no-op when the service already did), so
nothing staged outlives the request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from services.gateway import handlers, json_body
from services.gateway.openapi_body import request_schema
from shared import subjects
from shared.authz import Principal, scoped_workspace
from shared.errors import InvalidRequest, PayloadTooLarge, validation_message
from shared.messages import monitoring as mon
from shared.messages import monitoring_predictions as pred
from shared.objectstore import BUCKET_MONITORING
from shared.service import Runtime
from shared.settings import deploy_wait

log = logging.getLogger("railyard.gateway.monitoring")
MULTIPART = "multipart/form-data"
PNG_OR_JPEG = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def deployer_call_answers(settings: Any) -> float:
    """set_model, set_shadow_model and delete answer once the monitoring service's own call to the deployer did (a
    deploy of the new pipeline version, an undeploy), which it waits shared.settings.deploy_wait for: this is the
    part beyond the request timeout Route.wait adds, the monitoring service's own lookups around that call. They
    waited the model check's request + worker_timeout (305 s) while monitoring waited deploy_wait: with
    deployer.ready_timeout 600, 305 s against 610 s, a 504 while the swap carried on."""
    return deploy_wait(settings)


# (path, subject, request model, reply model, summary, unwrap, status, long_running[, waits]) rows for http.py's table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/deployments/add_tags", subjects.MONITORING_DEPLOYMENTS_ADD_TAGS, mon.AddDeploymentTags, mon.DeploymentTags,
     "Add tags to a deployment (answers with all its tags)."),
    ("/deployments/get_tags", subjects.MONITORING_DEPLOYMENTS_GET_TAGS, mon.DeploymentQuery, mon.DeploymentTags,
     "A deployment's tags."),
    ("/deployments/retrieve_information", subjects.MONITORING_DEPLOYMENTS_RETRIEVE_INFORMATION, mon.DeploymentQuery,
     mon.DeploymentInformation, "What is known about a deployment: names, status, tags, settings, models."),
    ("/deployments/update", subjects.MONITORING_DEPLOYMENTS_UPDATE, mon.UpdateDeployment, mon.DeploymentInformation,
     "Set a deployment's display name, target datalake or minimum threshold."),
    ("/deployments/delete", subjects.MONITORING_DEPLOYMENTS_DELETE, mon.DeleteDeployment, mon.DeploymentDeleted,
     "Stop a deployment and forget its tags and settings (409 while it has any, unless force_delete).",
     None, 200, True, deployer_call_answers),
    ("/deployments/get_model_version", subjects.MONITORING_DEPLOYMENTS_GET_MODEL_VERSION, mon.DeploymentQuery,
     mon.DeploymentModel, "The model version a deployment serves."),
    ("/deployments/set_model", subjects.MONITORING_DEPLOYMENTS_SET_MODEL, mon.SetDeploymentModel,
     mon.DeploymentModel, "Serve another model version: a new pipeline version, swapped in (answers once it serves).",
     None, 200, True, deployer_call_answers),
    ("/deployments/get_shadow_model", subjects.MONITORING_DEPLOYMENTS_GET_SHADOW_MODEL, mon.DeploymentQuery,
     mon.DeploymentModel, "The deployment's shadow model version (null without one)."),
    ("/deployments/set_shadow_model", subjects.MONITORING_DEPLOYMENTS_SET_SHADOW_MODEL, mon.SetDeploymentModel,
     mon.DeploymentModel, "Run a model version as the deployment's shadow challenger (a new pipeline version).",
     None, 200, True, deployer_call_answers),
]

# seed 003's predictions on images: the image rides base64 in the JSON body (within the JSON body limit) or, larger,
# as a multipart file part (accepting_image_uploads, http.py wraps these four routes with it); long-running
# (the gateway waits past the bus's default 5 s: predict waits for the engine, up to 30 s, and images go to storage)
JSON_ROUTE_SPECS += [
    ("/deployments/predict", subjects.MONITORING_PREDICT, pred.PredictImage, pred.PredictionResult,
     "Run the deployment's model on a PNG/JPEG image (base64, or a multipart file part up to 25 MiB) and keep the "
     "prediction (SDK: predict).",
     None, 200, True),
    ("/deployments/predict_bytes", subjects.MONITORING_PREDICT, pred.PredictImage, pred.PredictionResult,
     "As predict (SDK: predict_bytes, the image's bytes in memory).", None, 200, True),
    ("/deployments/monitor", subjects.MONITORING_MONITOR, pred.MonitorImage, pred.PredictionResult,
     "Keep a prediction made elsewhere on an image, checked strictly, like the deployment's own (SDK: monitor).",
     None, 200, True),
    ("/deployments/monitor_bytes", subjects.MONITORING_MONITOR, pred.MonitorImage, pred.PredictionResult,
     "As monitor (SDK: monitor_bytes).", None, 200, True),
]


def image_request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of an image route: the JSON body, or multipart with the image as a file part."""
    extra = request_schema(model)
    extra["requestBody"]["content"][MULTIPART] = {"schema": {
        "type": "object", "required": ["image", "metadata"],
        "properties": {"image": {"type": "string", "format": "binary",
                                 "description": "The PNG or JPEG bytes (up to monitoring.max_image_bytes)."},
                       "metadata": {"type": "string", "description": "The JSON body's other fields, as JSON."}}}}
    return extra


def accepting_image_uploads(runtime: Runtime, route: Any, json_endpoint: Callable, user_caller: Callable,
                            bearer_token: Callable) -> Callable:
    """The endpoint of an image route: a multipart body is staged and forwarded with its key, any other body goes
    to `json_endpoint` (the route's JSON forwarding, unchanged)."""
    settings = runtime.settings
    max_image = settings.monitoring.max_image_bytes
    wait = route.wait(settings)  # as the JSON forwarding waits (http.py's Route.wait)

    async def endpoint(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != MULTIPART:
            refuse_staged_key(await request.body())  # read once: Starlette keeps it for json_endpoint
            return await json_endpoint(request, principal)
        # two files at most: curl -F metadata=@body.json sends the metadata as a file part too
        form = await request.form(max_files=2, max_fields=4, max_part_size=settings.gateway.max_json_bytes)
        try:
            return await _stage_and_forward(request, principal, form)
        finally:
            await form.close()

    async def _stage_and_forward(request: Request, principal: Principal, form: Any) -> Any:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("the multipart body needs an 'image' file part with the PNG or JPEG bytes")
        unknown = sorted(set(form.keys()) - {"image", "metadata"})
        if unknown:
            raise InvalidRequest(f"unexpected multipart part {unknown[0]!r}: send 'image' (the file) and 'metadata' "
                                 "(the JSON body's other fields)")
        metadata = _metadata(await _text(form.get("metadata")))
        size = upload.size if upload.size is not None else -1
        if size > max_image:
            raise PayloadTooLarge(f"the image is {size} bytes, larger than {max_image} bytes "
                                  "(monitoring.max_image_bytes): send a smaller image")
        head = await upload.read(8)
        if not head:
            raise InvalidRequest("the 'image' part is empty: send the bytes of a PNG or JPEG image")
        if not head.startswith(PNG_OR_JPEG):
            raise InvalidRequest("the image is neither a PNG nor a JPEG (its first bytes are no PNG or JPEG "
                                 "signature): send image/png or image/jpeg")
        await upload.seek(0)
        if "filename" not in metadata and upload.filename:
            metadata["filename"] = upload.filename[:255]
        staged = pred.staged_image_key(principal.user_id, scoped_workspace(principal))
        try:  # checked before anything is staged: bad metadata leaves nothing behind
            command = route.model.model_validate({**metadata, "staged_key": staged})
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors(), "metadata")) from None
        json_body.refuse_lax_scalars(metadata, command, "metadata")
        try:
            await runtime.objects.put_stream(BUCKET_MONITORING, staged, upload.file, length=size,
                                             content_type=upload.content_type or "application/octet-stream")
            return await handlers.forward(runtime.broker, route.subject, command, bearer_token(request), wait)
        finally:  # the service deleted it already unless it never got the command (or failed to): no orphan
            try:
                await runtime.objects.delete(BUCKET_MONITORING, staged)
            except Exception as exc:  # the answer stands; the staging sweep takes what is left
                log.warning("could not delete staged image %s: %s", staged, exc)

    return endpoint


STAGED_KEY_FROM_CLIENT = "staged_key_not_accepted"


def refuse_staged_key(raw: bytes) -> None:
    """A JSON body naming `staged_key` gets InvalidRequest: the field is the gateway's, set from a multipart upload it
    staged (a client's own key would only consume its own staged image, but it is not the client's to send). The
    body is parsed only when it could name the field: spelled out, or with a \\u escape anywhere (base64 has none);
    malformed JSON is left to the JSON forwarding's own message."""
    if b"staged_key" not in raw and b"\\u" not in raw:
        return
    try:
        payload = orjson.loads(raw)
    except ValueError:
        return
    if isinstance(payload, dict) and "staged_key" in payload:
        raise InvalidRequest(
            "'staged_key' is set by the gateway, not by a client: send the image base64 in 'image' (up to the JSON "
            "body limit), or a larger one as multipart/form-data with an 'image' file part and a 'metadata' part "
            "holding the other fields", code=STAGED_KEY_FROM_CLIENT)


async def _text(part: Any) -> str:
    if part is None:
        return "{}"
    if isinstance(part, str):
        return part
    raw = await part.read()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("the 'metadata' part is not UTF-8 JSON") from None


def _metadata(text: str) -> dict[str, Any]:
    try:
        metadata = json_body.loads(text, "metadata") if text.strip() else {}
    except ValueError as exc:
        raise InvalidRequest(f"the 'metadata' part is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise InvalidRequest("the 'metadata' part must be a JSON object (the JSON body's fields but image)")
    if "image" in metadata or "staged_key" in metadata:
        raise InvalidRequest("the image came twice: send it as the 'image' part only, not in 'metadata'")
    return metadata
