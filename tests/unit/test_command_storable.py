"""Commands refuse what no service can store (found by the schemathesis pass, docs/testing.md): an integer beyond
PostgreSQL's bigint and a NUL character anywhere in a string. Both used to reach the services' SQL and come back as
500s; now they are validation errors naming the field, which the gateway answers with 400 invalid_request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.deployer.handlers import _deployment_id
from shared.errors import NotFound, validation_message
from shared.messages.assays import AssayConfig, GetBaseline
from shared.messages.auth import ActivateUser, ListWorkspaceUsers
from shared.messages.base import INT32, INT64, MAX_DEPTH
from shared.messages.deployer import CreatePipeline
from shared.messages.lineage import AddDatasetFile, ProjectLink
from shared.messages.monitoring_continuous import ContinuousTrainingDataset, SetupContinuousTraining
from shared.messages.monitoring_feedback import GetStats, ReferenceFeatureQuery
from shared.messages.tasks import RunTaskOnce


def refusal(model, payload) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return validation_message(caught.value.errors())


@pytest.mark.parametrize("value", [INT64[1] + 1, INT64[0] - 1, 2**100])
def test_an_id_beyond_a_bigint_is_refused_naming_the_field(value):
    assert refusal(ListWorkspaceUsers, {"workspace_id": value}) == (
        f"workspace_id: must be between {INT64[0]} and {INT64[1]}")


def test_the_bigint_bounds_themselves_are_accepted():
    for value in INT64:
        assert ListWorkspaceUsers.model_validate({"workspace_id": value}).workspace_id == value


def test_a_nul_in_a_string_key_or_nested_value_is_refused():
    assert refusal(ActivateUser, {"email": "a\x00@example.com"}).startswith("email: must not contain NUL")
    for definition in ({"steps": [{"name\x00": 1}]}, {"steps": [{"ModelInference": {"models": [{"name": "\x00"}]}}]}):
        assert refusal(CreatePipeline, {"pipeline_id": "p", "workspace_id": 1, "definition": definition}).startswith(
            "definition: must not contain NUL")


def test_integers_inside_free_form_objects_are_data_and_keep_their_size():
    command = RunTaskOnce.model_validate({"orch_id": "00000000-0000-0000-0000-000000000000", "workspace_id": 1,
                                          "json": {"n": 2**80, "nested": [2**90]}})
    assert command.args == {"n": 2**80, "nested": [2**90]}


def test_a_deeply_nested_body_is_walked_without_recursion_error():
    deep: list = []
    node = deep
    for _ in range(20_000):
        node.append([])
        node = node[0]
    node.append("\x00")
    body = {"pipeline_id": "p", "workspace_id": 1, "definition": {"x": deep}}
    assert "nested deeper" in refusal(CreatePipeline, body)


@pytest.mark.parametrize("name", ["model-²", "model-٣", f"model-{INT64[1] + 1}", "model-", "model"])
def test_a_deployment_name_without_a_storable_id_is_not_found(name):
    with pytest.raises(NotFound):
        _deployment_id(name)


def test_nesting_past_the_limit_is_refused_before_serialization_would_fail():
    def nested(depth: int) -> list:
        value: list = []
        for _ in range(depth):
            value = [value]
        return value

    fine = CreatePipeline.model_validate({"pipeline_id": "p", "workspace_id": 1, "definition": {"x": nested(60)}})
    assert fine.model_dump(mode="json")  # and it still travels
    # pydantic cannot serialize ~255 levels: the gateway answered 500 when it sent the command on
    assert refusal(CreatePipeline, {"pipeline_id": "p", "workspace_id": 1, "definition": {"x": nested(300)}}) == (
        f"definition: is nested deeper than {MAX_DEPTH} levels")


@pytest.mark.parametrize(("payload", "said"), [
    ({"start": "0001-01-01T00:00:00+05:00"},
     "start: 0001-01-01T00:00:00+05:00 is out of range once in UTC"),
    ({"end": "9999-12-31T23:00:00-05:00"}, "end: 9999-12-31T23:00:00-05:00 is out of range once in UTC"),
])
def test_a_time_without_a_utc_form_is_refused_naming_the_field(payload, said):
    """Found by hand after a clean `make fuzz-api` (December 2026): the services convert every time to UTC, and
    `astimezone` raised OverflowError, a 500."""
    assert refusal(GetBaseline, {"workspace_id": 1, "pipeline_name": "p", **payload}).startswith(said)


def test_a_time_without_a_utc_form_in_a_nested_model_is_named_by_its_path():
    window = {"pipeline": "p", "width": "1 hour", "start": "0001-01-01T00:00:00+01:00"}
    body = {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output x 0", "workspace_id": 1,
            "baseline": {"Static": {"values": [1.0]}}, "window": window, "summarizer": {}, "alert_threshold": 1.0}
    said = "window: start: 0001-01-01T00:00:00+01:00 is out of range"
    assert refusal(AssayConfig, body).startswith(said)
    body["window"]["start"] = None
    body["baseline"] = {"Fixed": {"pipeline": "p", "start_at": "2020-01-01T00:00:00Z",
                                  "end_at": "9999-12-31T23:59:59-00:01"}}
    assert refusal(AssayConfig, body).startswith("baseline: Fixed.end_at: 9999-12-31T23:59:59-00:01 is")


def test_the_earliest_and_latest_utc_times_and_naive_times_are_accepted():
    for start in ("0001-01-01T00:00:00Z", "0001-01-01T05:00:00+05:00", "9999-12-31T23:59:59Z",
                  "9999-12-31T18:59:59-05:00", "0001-01-01T00:00:00"):
        assert GetBaseline.model_validate({"workspace_id": 1, "pipeline_name": "p", "start": start}).start


@pytest.mark.parametrize(("labels", "said"), [
    ({"score": float("nan")}, "must be a finite number: nan cannot be stored"),
    ({"boxes": [[0, float("inf")]]}, "must be a finite number: inf cannot be stored"),
    ({"note": "a\ud800b"}, "must not contain a lone surrogate"),
    ({"\udc00": 1}, "must not contain a lone surrogate"),
])
def test_what_jsonb_refuses_in_a_free_form_value_is_refused_naming_the_field(labels, said):
    # the bus's JSON decoder (the standard library) reads NaN, Infinity and "\ud800"; jsonb refuses them (22P02), which
    # a service answered with a 500 (tests/integration/test_bus_data_errors.py has the real jsonb)
    body = {"dataset_id": 1, "name": "a.png", "staged_key": "k", "labels": labels}
    assert refusal(AddDatasetFile, body).startswith(f"labels: {said}")


def test_a_lone_surrogate_or_a_non_finite_number_is_refused_in_typed_fields_too():
    assert "lone surrogate" in refusal(GetBaseline, {"workspace_id": 1, "pipeline_name": "p\ud800",
                                                     "start": "2020-01-01T00:00:00Z"})
    # a field with a length bound (4b07bd6b: emails at most 254 characters) is refused by pydantic's own string check
    # before Command's, in its words; refused all the same, naming the field
    assert refusal(ActivateUser, {"email": "\ud800@example.com"}) == (
        "email: Input should be a valid string, unable to parse raw data as a unicode string")
    assert refusal(GetStats, {"deployment": "d", "service": "ACCURACY", "from_timestamp": float("nan")}) == (
        "from_timestamp: must be a finite number: nan cannot be stored")


def test_text_beyond_the_basic_plane_and_finite_numbers_are_kept():
    labels = {"note": "\U0001F600 é", "score": 1.5e300, "n": -0.0}
    assert AddDatasetFile.model_validate({"dataset_id": 1, "name": "a.png", "staged_key": "k",
                                          "labels": labels}).labels == labels


INT32_FIELDS = [  # a command field monitoring or lineage keeps in (or compares with) an `integer` column
    (SetupContinuousTraining, {"deployment": "d", "threshold": 1}, "project_id"),
    (SetupContinuousTraining, {"deployment": "d", "threshold": 1, "project_id": 1}, "timeout"),
    (ContinuousTrainingDataset, {"deployment": "d", "alias": "train"}, "dataset_version.dataset_id"),
    (ContinuousTrainingDataset, {"deployment": "d", "alias": "train"}, "dataset_version.version_id"),
    (ReferenceFeatureQuery, {"workspace_id": 1, "feature": "brightness"}, "deployment_id"),
    (ProjectLink, {"workspace_id": 1, "project_id": 1}, "version_num"),
]


def _with(body: dict, path: str, value: int) -> dict:
    body = {**body}
    head, _, rest = path.partition(".")
    if rest:
        body[head] = _with({"dataset_id": 1} if head == "dataset_version" else {}, rest, value)
    else:
        body[head] = value
    return body


@pytest.mark.parametrize(("model", "body", "path"), INT32_FIELDS)
def test_a_field_stored_in_an_integer_column_is_bounded_by_it(model, body, path):
    # beyond 2**31 - 1 asyncpg (or PostgreSQL) refused it in the service's SQL; data_errors only names a field whose
    # value it sees refused, and PostgreSQL's own "integer out of range" names none: a 400 before any SQL
    assert refusal(model, _with(body, path, INT32[1] + 1)).startswith(
        f"{path}: Input should be less than or equal to {INT32[1]}")
    assert model.model_validate(_with(body, path, INT32[1]))
