"""shared/omit_unset.py's omit_when_unset: the one serializer of the optional fields a message leaves out while unset.
It replaced the hand-written ones of the deployer's PipelineRecord, Pipelines and DeploymentRoute and of Assays (the
bytes below are those the hand-written serializers sent, from 1bc7a415's code for the same messages: a change fails
here), and serves the bus's ErrorBody's new `retry_after` (a crash loop's back-off through the gateway's
/deployments/predict), which an error body leaves out unless it says more than a reader's default, so an older reader
(its ErrorBody refusing unknown fields) still reads every other error."""

from __future__ import annotations

import pydantic_core
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ErrorBody, RailyardError, TooManyRequests, Unavailable, error_from_body
from shared.messages.assays import Assays
from shared.messages.base import Message, Reply, omit_when_unset
from shared.messages.deployer import DeploymentRoute, PipelineRecord, Pipelines
from shared.not_serving import CrashLoop

RECORD = dict(id=1, name="a", workspace_id=2, created_at="c", updated_at="u", versions=[{"id": 3, "version": "v"}],
              deployment=None)
ROUTE = dict(deployment_id=1, name="d-1", pipeline_name="p", workspace_id=2, status="Running", pipeline_version="v",
             input_schema=None)
RECORD_JSON = ('{"id":1,"name":"a","workspace_id":2,"created_at":"c","updated_at":"u",'
               '"versions":[{"id":3,"version":"v"}],"deployment":null')
ROUTE_JSON = ('{"deployment_id":1,"name":"d-1","pipeline_name":"p","workspace_id":2,"status":"%s",'
              '"pipeline_version":"v","input_schema":null,"output_schema":null,"batchable":false,"pipeline_id":null')
CUT_JSON = ',"versions_cursor":"3","versions_omitted":4'
ERROR_ROUTE = {**ROUTE, "status": "Error", "reason": "CrashLoopBackOff: x"}

BEFORE = {  # the bytes 1bc7a415's hand-written serializers made of each message
    "record whole": (PipelineRecord(**RECORD), RECORD_JSON + "}"),
    "record cut": (PipelineRecord(**RECORD, versions_cursor="3", versions_omitted=4),
                   RECORD_JSON + CUT_JSON + "}"),
    "pipelines whole": (Pipelines(pipelines=[PipelineRecord(**RECORD)]), '{"pipelines":[' + RECORD_JSON + "}]}"),
    "pipelines page": (Pipelines(pipelines=[PipelineRecord(**RECORD, versions_cursor="3", versions_omitted=4)],
                                 next_cursor="9"),
                       '{"pipelines":[' + RECORD_JSON + CUT_JSON + '}],"next_cursor":"9"}'),
    "assays whole": (Assays(assays=[{"id": 1}]), '{"assays":[{"id":1}]}'),
    "assays page": (Assays(assays=[{"id": 1}], next_cursor="5"), '{"assays":[{"id":1}],"next_cursor":"5"}'),
    "route running": (DeploymentRoute(**ROUTE), ROUTE_JSON % "Running" + "}"),
    "route crash loop": (DeploymentRoute(**ERROR_ROUTE, retry_after=11.6),
                         ROUTE_JSON % "Error" + ',"reason":"CrashLoopBackOff: x","retry_after":11.6}'),
    "route crash loop, a replica starting": (DeploymentRoute(**ERROR_ROUTE),
                                             ROUTE_JSON % "Error" + ',"reason":"CrashLoopBackOff: x"}'),
}


@pytest.mark.parametrize("case", list(BEFORE))
def test_the_deployer_s_messages_are_sent_as_before(case):
    message, sent = BEFORE[case]
    assert pydantic_core.to_json(message).decode() == sent
    assert message.model_dump_json() == sent
    assert type(message).model_validate_json(sent) == message  # and read back as they were


@pytest.mark.parametrize("error,sent", [
    (Unavailable("x"), '{"code":"unavailable","msg":"x"}'),
    (TooManyRequests("y", retry_after=1.0), '{"code":"rate_limited","msg":"y"}'),  # auth's 429: the default
    (CrashLoop("z", retry_after=1.0), '{"code":"deployment_crash_loop","msg":"z"}'),  # a replica starting now
    (RailyardError("i"), '{"code":"internal","msg":"i"}'),
])
def test_an_error_whose_wait_is_a_reader_s_default_is_sent_as_before(error, sent):
    reply = pydantic_core.to_json(Reply(ok=False, error=error.body(), status=error.status)).decode()
    assert reply == f'{{"ok":false,"data":null,"error":{sent},"status":{error.status}}}'
    assert _OlderReply.model_validate_json(reply).error.code == error.code  # a reader older than the field reads it


class _OlderErrorBody(BaseModel):
    """ErrorBody as readers before `retry_after` have it (unknown fields refused)."""

    model_config = ConfigDict(extra="forbid")
    code: str
    msg: str


class _OlderReply(Message):
    ok: bool
    data: dict | None = None
    error: _OlderErrorBody | None = None
    status: int = 200


def test_a_crash_loop_s_back_off_travels_and_is_read_back():
    error = CrashLoop("deployment 'd-1' is failing to start", retry_after=11.6)
    reply = pydantic_core.to_json(Reply(ok=False, error=error.body(), status=503))
    assert reply.endswith(b'"error":{"code":"deployment_crash_loop","msg":"deployment \'d-1\' is failing to start",'
                          b'"retry_after":11.6},"status":503}'), reply
    read = Reply.model_validate_json(reply)
    rebuilt = error_from_body(read.error, read.status)
    assert (rebuilt.status, rebuilt.code, rebuilt.retry_after) == (503, "deployment_crash_loop", 11.6)
    with pytest.raises(ValidationError):  # what an older reader makes of it: why gateways are upgraded first
        _OlderReply.model_validate_json(reply)
    limited = Reply.model_validate_json(pydantic_core.to_json(Reply(
        ok=False, error=TooManyRequests("slow down", retry_after=7.2).body(), status=429)))
    assert error_from_body(limited.error, 429).retry_after == 7.2


@pytest.mark.parametrize("said,kept", [(float("inf"), None), (float("nan"), None), (-5.0, 1.0), (0.2, 1.0),
                                       (86_400.0, 3600.0), (30.0, 30.0)])
def test_a_strange_wait_read_from_the_bus_is_bounded_not_refused(said, kept):
    body = ErrorBody.model_validate({"code": "deployment_crash_loop", "msg": "m", "retry_after": said})
    assert body.retry_after == kept
    assert not hasattr(error_from_body(body, 503), "retry_after") if kept is None else \
        error_from_body(body, 503).retry_after == kept


class _Example(Message):
    a: int
    b: str | None = None
    c: str | None = None
    d: int | None = None
    _each = omit_when_unset("b", "c")


class _Together(Message):
    cursor: str | None = None
    count: int | None = None
    _cut = omit_when_unset("cursor", "count", decided_by="cursor")


def test_the_helper_leaves_out_only_what_is_unset():
    assert _Example(a=1).model_dump() == {"a": 1, "d": None}  # a field not named keeps its null
    assert _Example(a=1, c="x").model_dump_json() == '{"a":1,"c":"x","d":null}'
    assert _Example(a=1, b="y").model_dump(include={"a"}) == {"a": 1}  # left out by include: nothing to remove
    assert _Together(count=3).model_dump() == {}  # one field decides for both
    assert _Together(cursor="c").model_dump() == {"cursor": "c", "count": None}
    schema = _Example.model_json_schema()  # the fields' schema stays (no return type on the serializer)
    assert set(schema["properties"]) == {"a", "b", "c", "d"}
    with pytest.raises(ValueError):
        omit_when_unset()


# shared.paging.NextCursor (every paged list's next_cursor: users, workspaces, models, tasks, ...) and auth's
# UserRecord (Keycloak's representation: email, firstName and lastName left out when absent) use the helper too; the
# bytes below are those their hand-written serializers made (ba565b41's tree), with an empty first name kept as sent
_USER = dict(id="u", username="n", enabled=True, createdTimestamp=5, access={"view": True})
_USER_JSON = ('{"id":"u","username":"n","emailVerified":false,"enabled":true,"createdTimestamp":5,"notBefore":0,'
              '"requiredActions":[],"disableableCredentialTypes":[],"access":{"view":true}}')
_NAMED = dict(id="v", username="m", email="e@x", emailVerified=True, enabled=False, firstName="", lastName="L",
              createdTimestamp=6, access={})
_NAMED_JSON = ('{"id":"v","username":"m","email":"e@x","emailVerified":true,"enabled":false,"firstName":"",'
               '"lastName":"L","createdTimestamp":6,"notBefore":0,"requiredActions":[],"disableableCredentialTypes":[],'
               '"access":{}}')


def _paged_and_users() -> dict[str, tuple[BaseModel, str]]:
    from shared.messages.auth import UserRecord, Users, Workspaces

    return {
        "user without names": (UserRecord(**_USER), _USER_JSON),
        "user with names": (UserRecord(**_NAMED), _NAMED_JSON),
        "users whole": (Users(users={"u": UserRecord(**_USER)}), '{"users":{"u":' + _USER_JSON + "}}"),
        "users page": (Users(users={"u": UserRecord(**_USER), "v": UserRecord(**_NAMED)}, next_cursor="7.u"),
                       '{"next_cursor":"7.u","users":{"u":' + _USER_JSON + ',"v":' + _NAMED_JSON + "}}"),
        "workspaces whole": (Workspaces(workspaces=[]), '{"workspaces":[]}'),
        "workspaces page, an empty cursor kept": (Workspaces(workspaces=[], next_cursor=""),
                                                  '{"next_cursor":"","workspaces":[]}'),
    }


@pytest.mark.parametrize("case", list(_paged_and_users()))
def test_paged_lists_and_user_records_are_sent_as_before(case):
    message, sent = _paged_and_users()[case]
    assert pydantic_core.to_json(message).decode() == sent
    assert message.model_dump_json() == sent
    assert pydantic_core.to_json(message.model_dump(mode="json", by_alias=True)).decode() == sent  # reply_ok's way
    assert type(message).model_validate_json(sent) == message
