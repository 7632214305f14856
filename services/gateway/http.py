"""The gateway's FastAPI application: routes are one line each and call a handler; errors are
translated once, here, into `{"code": ..., "msg": ...}` with the error's status."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from services.gateway import handlers
from shared import __version__
from shared.errors import InvalidRequest, RailyardError
from shared.service import Runtime

API = "/v1/api"
UI_PAGE = Path(__file__).parent / "ui.html"
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="Railyard MLOps API",
        version=__version__,
        docs_url=f"{API}/docs",
        redoc_url=None,
        openapi_url=f"{API}/openapi.json",
    )

    @app.exception_handler(RailyardError)
    async def railyard_error(_: Request, exc: RailyardError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "msg": exc.msg}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        msg = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"code": code, "msg": msg}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        err = InvalidRequest(f"{where}: {first.get('msg', 'invalid request')}")
        return JSONResponse({"code": err.code, "msg": err.msg}, status_code=err.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"code": "internal", "msg": "internal error"}, status_code=500)

    @app.get(f"{API}/health", tags=["platform"])
    async def health() -> JSONResponse:
        """Health of every service; 200 when all are ok, 503 otherwise."""
        report = await handlers.aggregate_health(runtime.broker)
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/", include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(UI_PAGE.read_text())

    return app
