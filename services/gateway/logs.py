"""`POST /v1/api/pipelines/get_logs`: a page of a pipeline's inference log from the log store, as
pandas-records JSON (default) or an Arrow IPC file, with the seed's `x-iteration-cursor` and
`x-iteration-status` headers (and a `Warning` header when rows lost columns for size)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.gateway import json_body
from services.gateway.accept import answer_type
from services.gateway.inference import ARROW_FILE, ARROW_STREAM
from services.gateway.openapi_body import request_schema
from shared import subjects
from shared.arrow_codec import from_ipc, to_ipc_file, to_ipc_stream
from shared.authz import Principal
from shared.bus import raw_request
from shared.bus import request as bus_request
from shared.errors import InvalidRequest, validation_message
from shared.logrecords import seed_rows
from shared.messages.logs import GetLogs, ListQuarantinedLogs, LogPage, QuarantinedLogs
from shared.service import Runtime
from shared.table_transport import PAGE_HEADER

QUERY_TIMEOUT = 30.0
LOG_TYPES = ("application/json", ARROW_FILE, ARROW_STREAM)
"""What get_logs answers (the first: the default, the seed's pandas-records JSON)."""


def add_log_routes(app: FastAPI, runtime: Runtime, user_caller, bearer_token) -> None:
    @app.post("/v1/api/pipelines/get_logs", tags=["pipelines"], openapi_extra=request_schema(GetLogs))
    async def get_logs(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A page of a pipeline's logs: pipeline_id (name), workspace_id, cursor, order (Asc/Desc, default
        Desc), page_size (default 1000), start_time and end_time (RFC 3339, both or neither), dataset and
        dataset_exclude. `Accept: application/vnd.apache.arrow.file` (or ...arrow.stream) answers with Arrow; 406
        when Accept lists none of JSON, Arrow file or stream."""
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:  # orjson says where: "unexpected character: line 1 ..."
            raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        try:  # {"workspace_id": true} is not workspace 1 (pydantic's lax mode reads it so, the log store's too)
            json_body.refuse_lax_scalars(body, GetLogs.model_validate(body))
        except ValidationError:
            pass  # the log store refuses it, in its own words
        kind = answer_type(request.headers.get("accept", ""), LOG_TYPES, "pipelines/get_logs")  # before the store
        nc = runtime.broker.config.connection_state.connection
        # the body as it came (checked above): re-encoding it failed on deep nesting (500); the log store validates
        reply = await raw_request(nc, subjects.LOG_STORE_QUERY, raw if raw.strip() else b"{}",
                                  token=bearer_token(request), timeout=QUERY_TIMEOUT)
        headers = reply.headers or {}
        page = LogPage.model_validate_json(headers[PAGE_HEADER])
        table = from_ipc(reply.data)
        out_headers = {"x-iteration-status": page.status}
        if page.cursor:
            out_headers["x-iteration-cursor"] = page.cursor
        if page.warning:
            out_headers["Warning"] = f'299 railyard "{page.warning}"'
        if kind == ARROW_FILE:
            return Response(to_ipc_file(table), media_type=ARROW_FILE, headers=out_headers)
        if kind == ARROW_STREAM:
            return Response(to_ipc_stream(table), media_type=ARROW_STREAM, headers=out_headers)
        return Response(orjson.dumps(seed_rows(table), option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json", headers=out_headers)

    @app.post("/v1/api/pipelines/list_quarantined_logs", tags=["pipelines"],
              openapi_extra=request_schema(ListQuarantinedLogs))
    async def list_quarantined_logs(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """Inference log batches the log store could not store and set aside, newest first (administrators;
        Railyard): workspace_id (optional), limit (default 100), before_id (the next page)."""
        raw = await request.body()
        try:
            cmd = ListQuarantinedLogs.model_validate_json(raw if raw.strip() else b"{}")
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors())) from None
        json_body.refuse_lax_scalars(orjson.loads(raw) if raw.strip() else {}, cmd)  # validated: JSON
        listed = await bus_request(runtime.broker, subjects.LOG_STORE_QUARANTINE_LIST, cmd,
                                   token=bearer_token(request), timeout=QUERY_TIMEOUT, reply_model=QuarantinedLogs)
        return Response(listed.model_dump_json(), media_type="application/json")
