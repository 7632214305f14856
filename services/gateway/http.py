"""The gateway's FastAPI application. Routes authenticate, convert and forward; errors are translated
once, here, into `{"code": ..., "msg": ...}` with the error's status. No business rules live here: the
service that owns a resource checks the caller's token again and applies the workspace rules."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from services.gateway import handlers, json_body
from services.gateway.authorize import add_authorize_routes
from services.gateway.errors import error_response, shape_of
from services.gateway.inference import Inference, InferenceFastPath, add_inference_routes
from services.gateway.limits import IMAGE_UPLOAD_PATHS, BodyLimits, Limits
from services.gateway.lineage import JSON_ROUTE_SPECS as LINEAGE_ROUTE_SPECS
from services.gateway.lineage import add_lineage_routes
from services.gateway.logs import add_log_routes
from services.gateway.monitoring import JSON_ROUTE_SPECS as MONITORING_ROUTE_SPECS
from services.gateway.monitoring import accepting_image_uploads, image_request_schema
from services.gateway.monitoring_continuous import JSON_ROUTE_SPECS as CONTINUOUS_ROUTE_SPECS
from services.gateway.monitoring_feedback import JSON_ROUTE_SPECS as FEEDBACK_ROUTE_SPECS
from services.gateway.monitoring_feedback import add_feedback_routes
from services.gateway.openapi_body import request_schema
from services.gateway.orchestrations import FORWARDS as ORCHESTRATION_FORWARDS
from services.gateway.orchestrations import JSON_ROUTE_SPECS as ORCHESTRATION_ROUTE_SPECS
from services.gateway.orchestrations import add_orchestration_routes
from services.gateway.ratelimit import TokenBuckets, TokenEndpointLimits
from services.gateway.source_address import SourceAddress, counted_as
from shared import __version__, subjects
from shared.authz import Principal, require_user
from shared.bus import request_encoded
from shared.errors import InvalidRequest, NotFound, RailyardError, Unauthorized, validation_message
from shared.messages import assays as asy
from shared.messages import auth as m
from shared.messages import deployer as dep
from shared.messages import logs as logm
from shared.messages import registry as reg
from shared.objectstore import BUCKET_ARTIFACTS, content_key
from shared.service import Runtime
from shared.settings import copy_wait, deploy_wait
from shared.staging import staged_key

log = logging.getLogger("railyard.gateway")
API = "/v1/api"
TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
CERTS_PATH = "/auth/realms/master/protocol/openid-connect/certs"
LOGOUT_PATH = "/auth/realms/master/protocol/openid-connect/logout"
UI_PAGE = Path(__file__).parent / "ui.html"
UI_STATIC = Path(__file__).parent / "static"  # the UI's scripts and vendored libraries (no CDN)
FAVICON = (UI_STATIC / "favicon.ico").read_bytes()
# Every HTML page the gateway serves may not be framed (clickjacking a signed-in UI's buttons) and sends no Referer
# (the UI's address holds the sign-in's one-time code). The CSP says frame-ancestors only: the UI's and Swagger UI's
# inline scripts and styles would be blocked by more (the sign-in page, all server-rendered, sends a strict one).
PAGE_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer"}
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


@dataclass(frozen=True)
class Route:
    """A JSON route forwarded as one command: path under /v1/api, subject, request and reply models."""

    path: str
    subject: str
    model: type[BaseModel]
    reply: Any
    summary: str
    unwrap: str | None = None  # answer with this field of the reply (the seed answers some routes with a list)
    status: int = 200  # 204 answers with no body, as the seed shows for deletions
    long_running: bool = False  # waits as long as a model check may take
    waits: Callable[[Any], float] | None = None  # seconds more this route may take, from the settings
    # the service answers its data encoded (shared.bus.EncodedData): passed on as it is once its top level is `reply`'s
    # (shared.bus.reply_data_bytes), not read and validated again (its content is the model's: the service's tests)
    encoded: bool = False
    # how the command is sent when not as one request (handlers.forward): task/list_task_runs asked whole reads
    # pages (orchestrations.FORWARDS) and answers their runs' JSON (a Response, passed on as it is)
    forward: Callable[..., Awaitable[dict[str, Any] | Response]] | None = None

    def wait(self, settings: Any) -> float:
        """Seconds the gateway waits for this route's answer, whatever the body (JSON or a multipart upload): the
        bus's request timeout, plus a model check's (registry.worker_timeout) on a long-running route, or what
        `waits` says the command may take beyond it."""
        more = settings.registry.worker_timeout if self.long_running else 0.0
        return settings.nats.request_timeout + max(more, self.waits(settings) if self.waits else 0.0)


def copy_answers(settings: Any) -> float:
    """A copy with `deploy` answers once the copy's replicas serve, or by the deployer's bound of the whole copy:
    shared.settings.copy_wait (this is the part beyond the request timeout Route.wait adds). It got a 504 after the
    request timeout while the deploy carried on, then after ready_timeout and two request timeouts while a copy whose
    steps took longer went on."""
    return copy_wait(settings) - settings.nats.request_timeout


def deploy_answers(settings: Any) -> float:
    """A deploy answers once its replicas serve or its model lookups gave up: shared.settings.deploy_wait (this
    is the part beyond the request timeout Route.wait adds). long_running alone waited the model check's 300 s
    whatever deployer.ready_timeout said, so a ready timeout above that was a 504 while the deploy carried on."""
    return deploy_wait(settings) - settings.nats.request_timeout


def replicas_stop(settings: Any) -> float:
    """An undeploy answers once its replicas drained (at most deployer.stop_timeout, all at once)."""
    return settings.deployer.stop_timeout


R = Route
JSON_ROUTES: list[Route] = [spec if isinstance(spec, Route) else R(*spec) for spec in [
    # a page of 1000 users read and checked again against m.Users here cost more than auth took to build it
    # (docs/performance.md item 57)
    Route("/users/query", subjects.AUTH_USERS_QUERY, m.QueryUsers, m.Users, "Get all users, or by id or workspace.",
          encoded=True),
    ("/users/invite", subjects.AUTH_USERS_INVITE, m.InviteUser, m.UserInvited, "Invite a user (admin)."),
    ("/users/deactivate", subjects.AUTH_USERS_DEACTIVATE, m.DeactivateUser, m.Empty, "Deactivate a user (admin)."),
    ("/users/activate", subjects.AUTH_USERS_ACTIVATE, m.ActivateUser, m.Empty, "Activate a user (admin)."),
    ("/users/update_password", subjects.AUTH_USERS_UPDATE_PASSWORD, m.UpdatePassword, m.Empty,
     "Set your own password (with current_password), or another user's (administrators, by email); the user's "
     "tokens stop working."),
    ("/workspaces/list", subjects.AUTH_WORKSPACES_LIST, m.ListWorkspaces, m.Workspaces, "List workspaces."),
    ("/workspaces/create", subjects.AUTH_WORKSPACES_CREATE, m.CreateWorkspace, m.WorkspaceCreated,
     "Create a workspace."),
    ("/workspaces/add_user", subjects.AUTH_WORKSPACES_ADD_USER, m.AddWorkspaceUser, m.Empty,
     "Add a user to a workspace."),
    ("/workspaces/list_users", subjects.AUTH_WORKSPACES_LIST_USERS, m.ListWorkspaceUsers, m.WorkspaceUsers,
     "List the users of a workspace."),
    ("/workspaces/remove_user", subjects.AUTH_WORKSPACES_REMOVE_USER, m.RemoveWorkspaceUser, m.AffectedRows,
     "Remove a user from a workspace."),
    ("/workspaces/create_inference_client", subjects.AUTH_INFERENCE_CLIENTS_CREATE, m.CreateInferenceClient,
     m.InferenceClientCreated, "Create an inference client of a workspace (owners; the secret is shown once)."),
    ("/workspaces/list_inference_clients", subjects.AUTH_INFERENCE_CLIENTS_LIST, m.ListInferenceClients,
     m.InferenceClients, "List a workspace's inference clients (members; no secrets)."),
    ("/workspaces/revoke_inference_client", subjects.AUTH_INFERENCE_CLIENTS_REVOKE, m.RevokeInferenceClient, m.Empty,
     "Revoke an inference client (owners); its tokens stop working."),
    ("/features/list", subjects.AUTH_FEATURES_LIST, m.ListFeatures, m.Features, "List enabled features."),
    ("/models/list", subjects.REGISTRY_MODELS_LIST, reg.ListModels, reg.ModelList, "List the models of a workspace."),
    ("/models/get_by_id", subjects.REGISTRY_MODELS_GET_BY_ID, reg.GetModelById, reg.ModelDetails,
     "Get a model's details."),
    ("/models/list_versions", subjects.REGISTRY_MODELS_LIST_VERSIONS, reg.ListModelVersions,
     list[reg.ModelVersionRecord], "List a model's versions.", "versions"),
    ("/models/get_config_by_id", subjects.REGISTRY_MODELS_GET_CONFIG, reg.GetModelConfig, reg.ModelConfig,
     "Get a model's configuration."),
    ("/models/get", subjects.REGISTRY_MODELS_GET, reg.GetModel, reg.ModelWithVersions,
     "Get a model with its versions."),
    ("/models/create_registry", subjects.REGISTRY_REGISTRIES_CREATE, reg.CreateRegistry, reg.RegistryCreated,
     "Connect an MLflow model registry to a workspace."),
    ("/models/attach_registry_to_workspace", subjects.REGISTRY_REGISTRIES_ATTACH, reg.AttachRegistry,
     reg.RegistryAttachment, "Attach a registry to a workspace."),
    ("/models/remove_registry_from_workspace", subjects.REGISTRY_REGISTRIES_DETACH, reg.AttachRegistry,
     reg.RegistryAttachment, "Detach a registry from a workspace."),
    ("/models/get_registry", subjects.REGISTRY_REGISTRIES_GET, reg.GetRegistry, reg.RegistryRecord,
     "Get a registry's details."),
    ("/models/list_registries", subjects.REGISTRY_REGISTRIES_LIST, reg.ListRegistries, list[reg.RegistryRecord],
     "List a workspace's registries (tokens masked).", "registries"),
    ("/models/list_registry_models", subjects.REGISTRY_REGISTRIES_LIST_MODELS, reg.ListRegistryModels,
     reg.RegistryModels, "List the registered models of a registry (paged with next_page_token)."),
    ("/models/list_registry_model_version_artifacts", subjects.REGISTRY_REGISTRIES_LIST_ARTIFACTS,
     reg.ListRegistryArtifacts, list[reg.RegistryArtifact], "List a model version's artifacts.", "artifacts"),
    Route("/models/upload_from_registry", subjects.REGISTRY_REGISTRIES_UPLOAD, reg.UploadFromRegistry,
          reg.UploadedFromRegistry, "Copy a registry artifact into a workspace as a model.", long_running=True),
    ("/pipelines/create", subjects.DEPLOYER_PIPELINES_CREATE, dep.NewPipeline, dep.PipelineCreated,
     "Create a pipeline (a changed definition makes a new version)."),
    Route("/pipelines/copy", subjects.DEPLOYER_PIPELINES_COPY, dep.CopyPipeline, dep.PipelineCopied,
          "Copy a pipeline.", waits=copy_answers),
    ("/pipelines/list", subjects.DEPLOYER_PIPELINES_LIST, dep.ListPipelines, dep.Pipelines,
     "List a workspace's pipelines with versions and deployment."),
    ("/pipelines/get", subjects.DEPLOYER_PIPELINES_GET, dep.GetPipeline, dep.PipelineRecord,
     "Get a pipeline with its versions and deployment."),
    Route("/pipelines/deploy", subjects.DEPLOYER_PIPELINES_DEPLOY, dep.NewDeployment, dep.Deployed,
          "Deploy a pipeline version (answers once its engine replicas serve).", waits=deploy_answers),
    Route("/pipelines/undeploy", subjects.DEPLOYER_PIPELINES_UNDEPLOY, dep.UndeployPipeline, None, "Undeploy.",
          waits=replicas_stop),
    ("/status/get_deployment", subjects.DEPLOYER_DEPLOYMENTS_STATUS, dep.GetDeploymentStatus, dep.DeploymentStatus,
     "A deployment's status (name is <deploy_id>-<id>)."),
    ("/admin/get_pipeline_external_url", subjects.DEPLOYER_DEPLOYMENTS_EXTERNAL_URL, dep.GetExternalUrl,
     dep.ExternalUrl, "The inference URL of a deployed pipeline."),
    ("/pipelines/set_log_retention", subjects.LOG_STORE_SET_RETENTION, logm.SetLogRetention, logm.LogRetention,
     "Keep a pipeline's inference logs this many days (Railyard)."),
    ("/assays/create", subjects.ASSAYS_CREATE, asy.NewAssayConfig, asy.AssayCreated,
     "Create an assay on a pipeline's logged field (it runs by itself while active; a name the pipeline's "
     "assays have already is 409)."),
    ("/assays/list", subjects.ASSAYS_LIST, asy.ListAssays, list[dict[str, Any]], "List a pipeline's assays.", "assays"),
    ("/assays/set_active", subjects.ASSAYS_SET_ACTIVE, asy.SetAssayActive, asy.AssayActive,
     "Activate or deactivate an assay."),
    ("/assays/run_interactive_baseline", subjects.ASSAYS_RUN_BASELINE, asy.NewAssayConfig, dict[str, Any],
     "Summarize an assay's baseline."),
    ("/assays/get_baseline", subjects.ASSAYS_GET_BASELINE, asy.GetBaseline, list[dict[str, Any]],
     "Logged rows of a pipeline to build a baseline from.", "rows"),
    Route("/assays/run_interactive", subjects.ASSAYS_RUN_INTERACTIVE, asy.NewAssayConfig, list[dict[str, Any]],
          "Score every window of an assay configuration now.", unwrap="results", long_running=True),
    ("/assays/get_results", subjects.ASSAYS_GET_RESULTS, asy.GetAssayResults, list[dict[str, Any]],
     "An assay's stored results, newest window first.", "results"),
    ("/connections/create", subjects.REGISTRY_CONNECTIONS_CREATE, reg.CreateConnection, reg.ConnectionId,
     "Create a data connection."),
    ("/connections/add_to_workspace", subjects.REGISTRY_CONNECTIONS_ADD_TO_WORKSPACE, reg.AddConnectionToWorkspace,
     reg.ConnectionId, "Attach a connection to a workspace."),
    ("/connections/list", subjects.REGISTRY_CONNECTIONS_LIST, reg.ListConnections, reg.Connections,
     "List a workspace's connections (secret fields masked)."),
    ("/connections/get", subjects.REGISTRY_CONNECTIONS_GET, reg.GetConnection, reg.ConnectionRecord,
     "Get a connection by name."),
    ("/connections/get_by_id", subjects.REGISTRY_CONNECTIONS_GET_BY_ID, reg.GetConnectionById, reg.ConnectionRecord,
     "Get a connection by id."),
    ("/connections/remove_from_workspace", subjects.REGISTRY_CONNECTIONS_REMOVE_FROM_WORKSPACE,
     reg.RemoveConnectionFromWorkspace, None, "Detach a connection from a workspace (204).", None, 204),
    ("/connections/delete", subjects.REGISTRY_CONNECTIONS_DELETE, reg.DeleteConnection, None,
     "Delete a connection attached to no workspace (204; 409 while attached).", None, 204),
]]
JSON_ROUTES += [R(*spec, forward=ORCHESTRATION_FORWARDS.get(spec[0])) for spec in ORCHESTRATION_ROUTE_SPECS]
JSON_ROUTES += [R(*spec) for spec in LINEAGE_ROUTE_SPECS]
JSON_ROUTES += [R(*spec) for spec in MONITORING_ROUTE_SPECS]
JSON_ROUTES += [R(*spec) for spec in FEEDBACK_ROUTE_SPECS]
JSON_ROUTES += [R(*spec) for spec in CONTINUOUS_ROUTE_SPECS]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return token.strip()


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    source_address = SourceAddress(settings.gateway.trusted_proxies, settings.gateway.trusted_proxy_header)
    token_limits = TokenEndpointLimits(
        TokenBuckets(settings.gateway.token_rate_per_source, settings.gateway.token_burst_per_source),
        TokenBuckets(settings.gateway.token_rate_per_client, settings.gateway.token_burst_per_client))
    # Swagger UI's script, styles and icon come from a packaged distribution served by the gateway itself, never
    # from a CDN: self-hosted installs are often offline, where a CDN-backed docs page is blank.
    app = FastAPIOffline(
        title="Railyard MLOps API",
        version=__version__,
        docs_url=f"{API}/docs",
        redoc_url=None,
        openapi_url=f"{API}/openapi.json",
        static_url=f"{API}/docs-assets",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )

    def verifier():
        return runtime.extras["verifier"]

    async def caller(request: Request) -> Principal:
        """Any valid token (user or inference)."""
        return await verifier().verify(bearer_token(request))

    async def user_caller(principal: Principal = Depends(caller)) -> Principal:
        """A user token: inference tokens may call inference routes only."""
        return require_user(principal)

    @app.exception_handler(RailyardError)
    async def railyard_error(request: Request, exc: RailyardError) -> Response:
        return error_response(exc, shape_of(request.url.path))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:  # a mistyped path or method: say where the routes are listed
            message = f"no such route: {request.method} {request.url.path} (the routes are listed at {API}/docs)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or "another method"
            message = f"{request.method} is not allowed on {request.url.path}: use {allowed} (routes: {API}/docs)"
        err = RailyardError(message, code=HTTP_CODES.get(exc.status_code, "http_error"))
        err.status = exc.status_code
        response = error_response(err, shape_of(request.url.path))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequest(validation_message(exc.errors())), shape_of(request.url.path))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)  # the client sees no detail; we do
        return error_response(RailyardError("internal error"), shape_of(request.url.path))

    @app.get(f"{API}/health", tags=["platform"])
    async def health() -> JSONResponse:
        """Health of every service; 200 when all are ok, 503 otherwise (no token needed)."""
        report = await handlers.aggregate_health(runtime.broker)
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def client_form(request: Request, grant_type: str | None = None) -> tuple[str, Any, str, str]:
        """The first steps of the token and logout endpoints, one code for both so that they are limited alike
        (`duplicates` D4: the logout route had copied them): the request's source counted in its bucket before the
        body is read (one bucket per source for both routes and the web UI's sign-in), the form read, the client's
        credentials (HTTP Basic, or the form's client_id and client_secret) and, for a client that sends a secret,
        its bucket spent as `grant_type` asks (the form's when None; TokenEndpointLimits.check_client: an inference
        client's client_credentials grant). A public client proves nothing and spends no client bucket
        (ratelimit.py). (source, form, client_id, client_secret); the source as it is counted (an IPv6 client by its
        /64), the TCP peer's or behind a trusted proxy the client it names, which the token route also sends to the
        auth service for its failed-login counts (services/gateway/source_address.py)."""
        source = counted_as(source_address.of(request.client.host if request.client else None,
                                              request.headers.getlist(source_address.header)))
        token_limits.check_source(source)  # before the body is read
        form = await request.form()
        client_id, client_secret = _client_credentials(request, form)
        if len(client_secret) > m.SECRET_CHARS:  # a form's, before its digest (the client's bucket) and the bus: 400
            raise InvalidRequest(f"client_secret: at most {m.SECRET_CHARS} characters")
        if client_secret:
            token_limits.check_client(client_id, client_secret,
                                      str(form.get("grant_type") or "") if grant_type is None else grant_type)
        return source, form, client_id, client_secret

    @app.post(TOKEN_PATH, tags=["auth"])
    async def token(request: Request) -> JSONResponse:
        """OAuth2 token endpoint: password, refresh_token, client_credentials and authorization_code (PKCE) grants; a
        confidential client authenticates with HTTP Basic (or client_id/client_secret form fields), the web UI's
        public client sends client_id alone."""
        try:
            source, form, client_id, client_secret = await client_form(request)
            if form.get("grant_type") == "refresh_token" and len(_opt(form, "refresh_token") or "") > m.TOKEN_CHARS:
                raise _long_refresh_token(Unauthorized)  # the refresh grant's answer for a refresh token not ours
            try:
                cmd = m.IssueToken(
                    grant_type=str(form.get("grant_type") or ""), client_id=client_id, client_secret=client_secret,
                    username=_opt(form, "username"), password=_opt(form, "password"),
                    refresh_token=_opt(form, "refresh_token"), scope=_opt(form, "scope"), source=source,
                    code=_opt(form, "code"), code_verifier=_opt(form, "code_verifier"),
                    redirect_uri=_opt(form, "redirect_uri"))
            except ValidationError as exc:  # a username over NAME_CHARS, a password or refresh token over its bound
                raise InvalidRequest(validation_message(exc.errors())) from None
            if not cmd.grant_type:
                raise InvalidRequest(_missing_grant_type(request.headers.get("content-type", "")))
            issued = await handlers.issue_token(runtime.broker, cmd, timeout)
        except RailyardError as exc:
            return error_response(exc, "oauth")
        return JSONResponse({k: v for k, v in issued.items() if v is not None}, headers={"Cache-Control": "no-store"})

    @app.post(LOGOUT_PATH, tags=["auth"], status_code=204)
    async def logout(request: Request) -> Response:
        """Sign out (Keycloak's logout endpoint for a client): the form's `refresh_token` and its whole session stop
        working, every access token of it too (docs/auth.md). The client authenticates as at the token endpoint.
        204 when done; 400 `invalid_grant` for a refresh token that is expired, not this server's or another
        client's."""
        try:
            # counted as the refresh_token grant it stands for (a user's refresh token with its client's credentials):
            # the source's bucket, shared with the token route, and no client bucket (ratelimit.py's Decisions)
            _, form, client_id, client_secret = await client_form(request, grant_type="refresh_token")
            refresh_token = _opt(form, "refresh_token")
            if not refresh_token:
                raise InvalidRequest("logout needs the refresh_token of the session to end")
            try:
                cmd = m.EndSession(client_id=client_id, client_secret=client_secret, refresh_token=refresh_token)
            except ValidationError:  # longer than EndSession takes: no refresh token of ours (it was a 500)
                raise _long_refresh_token(InvalidRequest) from None
            await handlers.end_session(runtime.broker, cmd, timeout)
        except RailyardError as exc:
            return error_response(exc, "oauth")
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    add_authorize_routes(app, runtime, source_address, token_limits)  # the web UI's sign-in (PKCE)

    @app.get(CERTS_PATH, tags=["auth"])
    async def certs() -> dict[str, Any]:
        """The public keys (JWKS) that verify Railyard tokens."""
        return {"keys": await handlers.signing_keys(runtime.broker, timeout)}

    for route in JSON_ROUTES:
        endpoint, body = _forwarding_endpoint(runtime, route, user_caller), request_schema(route.model)
        if f"{API}{route.path}" in IMAGE_UPLOAD_PATHS:  # also multipart: the image staged in object storage
            endpoint = accepting_image_uploads(runtime, route, endpoint, user_caller, bearer_token)
            body = image_request_schema(route.model)
        app.post(f"{API}{route.path}", tags=[route.path.split("/")[1]], summary=route.summary,
                 response_model=route.reply, status_code=route.status, openapi_extra=body)(endpoint)

    inference = Inference(runtime)
    runtime.extras["inference"] = inference  # its membership cache is dropped on a membership change (app.py)
    add_inference_routes(app, runtime, caller, inference)
    add_log_routes(app, runtime, user_caller, bearer_token)
    add_orchestration_routes(app, runtime, user_caller, bearer_token)
    add_lineage_routes(app, runtime, user_caller, bearer_token)
    add_feedback_routes(app, runtime, user_caller, bearer_token)

    @app.get("/", include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(UI_PAGE.read_text(), headers=PAGE_HEADERS)

    # browsers ask every page's origin for /favicon.ico when the page names no icon: it was a 404 on every page (the
    # UI's, the sign-in's, the API docs'), a console error each time. A 16x16 icon (static/favicon.ico), cached a day
    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=UI_STATIC), name="static")

    @app.post(f"{API}/models/upload_and_convert", tags=["models"], response_model=reg.ModelInserted)
    async def upload_and_convert(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Upload a model: multipart with a `metadata` JSON part (name, visibility, workspace_id, conversion)
        and a `file` part, or upload_stream's form fields and a `file` part."""
        form = await request.form(max_files=1, max_fields=10)
        raw = form.get("metadata")
        if raw is None and (form.get("name") or form.get("workspace_id")):
            # seed 001's stream-upload example posts upload_stream's form fields to this URL (lines 871-888: its
            # `apiRequest` is this route's URL from an earlier cell) and shows the model inserted
            return await _stage_and_register(request, principal, form, _stream_metadata(form), numbers=False)
        if raw is None:
            raise InvalidRequest("the multipart body needs a 'metadata' part with the model's JSON metadata (or "
                                 "the form fields name and workspace_id, as models/upload_stream takes them)")
        try:
            metadata = json_body.loads(raw if isinstance(raw, str) else await raw.read(), "metadata")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("the 'metadata' part is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise InvalidRequest("the 'metadata' part must be a JSON object")
        return await _stage_and_register(request, principal, form, metadata)

    @app.post(f"{API}/models/upload_stream", tags=["models"], response_model=reg.ModelInserted)
    async def upload_stream(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Stream a (large) ONNX model: multipart form fields name, filename, visibility, workspace_id and a
        `file` part; the file goes to object storage as it arrives (spooled to disk, never held in memory)."""
        form = await request.form(max_files=1, max_fields=10)
        return await _stage_and_register(request, principal, form, _stream_metadata(form), numbers=False)

    def _stream_metadata(form: Any) -> dict[str, Any]:
        metadata = {key: form.get(key) for key in ("name", "visibility", "workspace_id") if form.get(key)}
        metadata["conversion"] = {"framework": str(form.get("framework") or "onnx")}
        if form.get("filename"):
            metadata["file_name"] = str(form.get("filename"))
        return metadata

    @app.post(f"{API}/models/download", tags=["models"], openapi_extra=request_schema(reg.ResolveModel))
    async def download_model(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A ready model version's artifact bytes ({"workspace_id", "name", "version"?}: the latest without a
        version); what a task run reads to start from a model (e.g. an ML backend's package to fit further)."""
        raw = await request.body()
        try:
            body = json_body.loads(raw) if raw.strip() else {}
            command = reg.ResolveModel.model_validate(body)
        except (ValueError, UnicodeDecodeError) as exc:
            errors = exc.errors() if isinstance(exc, ValidationError) else []
            raise InvalidRequest(validation_message(errors) if errors else
                                 "the body must be JSON: {\"workspace_id\", \"name\", \"version\"?}") from None
        json_body.refuse_lax_scalars(body, command)  # {"workspace_id": true} is not workspace 1
        resolved = reg.ResolvedModel.model_validate(await handlers.forward(
            runtime.broker, subjects.REGISTRY_MODELS_RESOLVE, command, bearer_token(request), timeout))
        key = content_key(resolved.sha)
        if not await runtime.objects.exists(BUCKET_ARTIFACTS, key):
            raise NotFound("the model version's artifact is missing from storage")
        return StreamingResponse(runtime.objects.get_stream(BUCKET_ARTIFACTS, key),
                                 media_type="application/octet-stream",
                                 headers={"X-Railyard-Model-Version": resolved.model_version,
                                          "X-Railyard-Framework": resolved.framework})

    async def _stage_and_register(request: Request, principal: Principal, form: Any, metadata: dict[str, Any], *,
                                  numbers: bool = True) -> Any:
        """`numbers=False`: `metadata` is form fields (text: seed 001's upload_stream example posts `workspace_id`
        so), whose numbers are read from their text; a JSON `metadata` part's must be JSON numbers."""
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("the multipart body needs a 'file' part with the model file")
        objects = runtime.objects
        staged = staged_key(principal)  # the registry takes it from this user and token scope only
        size = upload.size if upload.size is not None else -1
        await objects.put_stream(BUCKET_ARTIFACTS, staged, upload.file, length=size)
        body = {"file_name": upload.filename or str(metadata.get("name", "model")), **metadata, "staged_key": staged}
        try:
            command = reg.UploadModel.model_validate(body)
            json_body.refuse_lax_scalars(metadata, command, "metadata", numbers=numbers)
        except (ValidationError, InvalidRequest) as exc:
            await objects.delete(BUCKET_ARTIFACTS, staged)
            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest(validation_message(exc.errors(), "metadata")) from None
        try:
            return await handlers.forward(runtime.broker, subjects.REGISTRY_MODELS_UPLOAD, command,
                                          bearer_token(request), settings.registry.worker_timeout + timeout)
        except RailyardError as exc:
            if exc.code in ("upstream_timeout", "unavailable"):  # the registry never saw it: clean up here
                await objects.delete(BUCKET_ARTIFACTS, staged)
            raise

    answer_head(app)
    # the inference fast path sits outermost and limits its own body; everything else goes through the limits
    gateway = settings.gateway
    pages = PageHeaders(app, {f"{API}/docs", app.swagger_ui_oauth2_redirect_url or ""})  # fastapi_offline's
    limited = BodyLimits(pages, Limits(gateway.max_json_bytes, gateway.max_body_bytes, gateway.max_upload_bytes,
                                     gateway.body_timeout, settings.monitoring.max_image_bytes))
    return InferenceFastPath(limited, inference, verifier, gateway.max_body_bytes, gateway.body_timeout)


NEXT_CURSOR_HEADER = "x-next-cursor"
"""Where a route answered with a bare list (Route.unwrap) puts a page's `next_cursor` (docs/api-paging.md)."""


def _forwarding_endpoint(runtime: Runtime, route: Route, who: Callable) -> Callable:
    """An endpoint that forwards its body as `subject` with the caller's token. The body is read as JSON
    whatever the Content-Type (curl's -d sends form encoding), after the token has been checked."""

    async def endpoint(request: Request, response: Response, principal: Principal = Depends(who)) -> Any:
        raw = await request.body()
        try:
            payload = json_body.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:  # orjson says where: "unexpected character: line 1 ..."
            raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("request body must be a JSON object")
        try:
            command = route.model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors())) from None
        json_body.refuse_lax_scalars(payload, command)
        if route.encoded:
            return Response(await request_encoded(runtime.broker, route.subject, command, token=bearer_token(request),
                                                  timeout=route.wait(runtime.settings), reply_model=route.reply),
                            status_code=route.status, media_type="application/json")
        reply = await (route.forward or handlers.forward)(runtime.broker, route.subject, command,
                                                          bearer_token(request), route.wait(runtime.settings))
        if isinstance(reply, Response):  # already its JSON (task/list_task_runs asked whole): not checked again
            return reply
        if route.status == 204:
            return Response(status_code=204)
        if not route.unwrap:
            return reply
        if reply.get("next_cursor"):  # a page of a list the seed answers bare (assays/list): its cursor in a header
            response.headers[NEXT_CURSOR_HEADER] = reply["next_cursor"]
        return reply[route.unwrap]

    endpoint.__name__ = route.subject.replace(".", "_")
    return endpoint


def answer_head(app: FastAPI) -> None:
    """HEAD on every GET route (curl -I, uptime checkers; FastAPI routes answer GET only): the GET's endpoint, status
    and headers, without the body (the server sends none to a HEAD). Hidden from the OpenAPI document."""
    heads = {route.path for route in app.routes if isinstance(route, APIRoute) and "HEAD" in route.methods}
    for route in list(app.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods and route.path not in heads:
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False,
                              response_model=route.response_model, status_code=route.status_code,
                              response_class=route.response_class, dependencies=route.dependencies,
                              name=f"{route.name}_head")


class PageHeaders:
    """PAGE_HEADERS on the answers of `paths`: HTML pages of routes defined outside Railyard (Swagger UI's)."""

    def __init__(self, app: Callable, paths: set[str]) -> None:
        self.app, self.paths = app, paths
        self.raw = [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.raw]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _long_refresh_token(kind: type[RailyardError]) -> RailyardError:
    """A refresh token longer than m.TOKEN_CHARS is none of ours: refused `invalid_grant` as any refresh token not
    ours, with the status its route gives one (the token route's refresh grant 401, logout 400: docs/auth.md),
    before anything is sent. RFC 6749 5.2: invalid_grant is the refresh token "invalid, expired, revoked"; the request
    itself is well formed (invalid_request told the client it was not, and the token route said so while logout said
    invalid_grant). RFC 7009 2.2: an invalid token is not the client's request error either."""
    return kind(f"invalid refresh token: longer than any this server issues (at most {m.TOKEN_CHARS} characters)",
                code="invalid_grant")


def _opt(form: Any, name: str) -> str | None:
    value = form.get(name)
    return str(value) if value not in (None, "") else None


def _missing_grant_type(content_type: str) -> str:
    """What a token request without grant_type is told: a JSON body (requests' `json=`) is read as no form at all,
    so it says where the fields go rather than that the grant_type it did send is missing."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return "grant_type is required"
    return (f"grant_type is required, as a form field: the token endpoint reads an application/x-www-form-urlencoded "
            f"body (OAuth 2.0), not {media or 'a body without a Content-Type'} (e.g. requests.post(url, data=...), "
            "curl -d grant_type=password)")


def _client_credentials(request: Request, form: Any) -> tuple[str, str]:
    """(client_id, client_secret) from HTTP Basic or the form. A client id over CLIENT_ID_CHARS is no client of ours,
    refused here, before its bucket's key (ratelimit.py) and the bus: in HTTP Basic the client's authentication failed
    (an unknown client), RFC 6749 5.2's 401 invalid_client; as a form field the request is malformed, 400
    invalid_request (docs/auth.md, "Brute force"). Likewise a secret over SECRET_CHARS in HTTP Basic (no client of
    ours has one) before its digest: 401 invalid_client, as every failed Basic authentication (it was 400
    invalid_request beside the long id's 401); a form's is 400 (`client_form`)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    too_long = f"client_id: at most {m.CLIENT_ID_CHARS} characters"
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials", code="invalid_client") from None
        client_id, secret = unquote(client_id), unquote(secret)
        if len(client_id) > m.CLIENT_ID_CHARS:
            raise Unauthorized(too_long, code="invalid_client")
        if len(secret) > m.SECRET_CHARS:
            raise Unauthorized(f"client_secret: at most {m.SECRET_CHARS} characters", code="invalid_client")
        return client_id, secret
    if form.get("client_id"):  # without client_secret: a public client (the web UI's); auth decides
        if len(client_id := str(form["client_id"])) > m.CLIENT_ID_CHARS:
            raise InvalidRequest(too_long)
        return client_id, str(form.get("client_secret") or "")
    raise Unauthorized("client authentication required (HTTP Basic with the client id and secret, or the client_id"
                       " of a public client)", code="invalid_client")
