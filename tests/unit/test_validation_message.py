"""The 400s built from pydantic's validation errors (shared.errors.validation_message) read as the sentences our
validators wrote: no "Value error, " before them, no "body: " before a sentence about the whole request; pydantic's
own words keep saying what they are about. The same message on the bus and at the gateway, with the typed code."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from shared.bus import CallContext, run_command
from shared.errors import validation_detail, validation_message
from shared.messages.auth import ListWorkspaceUsers
from shared.messages.lineage import RestoreProjectVersion


def errors(model, payload) -> list:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return caught.value.errors()


def test_a_validators_sentence_about_the_whole_body_reads_alone():
    assert validation_message(errors(RestoreProjectVersion, {"project_id": 1})) == (
        "give exactly one of version_id or version_num")


def test_a_field_is_named_before_its_validators_sentence():
    assert validation_message(errors(ListWorkspaceUsers, {"workspace_id": 2**70})).startswith(
        "workspace_id: must be between ")


def test_pydantics_own_words_keep_where_they_are():
    assert validation_message(errors(ListWorkspaceUsers, [])) == (
        "body: Input should be a valid dictionary or instance of ListWorkspaceUsers")
    assert validation_message(errors(ListWorkspaceUsers, []), "metadata").startswith("metadata: Input should be")
    assert validation_message(errors(RestoreProjectVersion, {})) == "project_id: Field required"
    both = errors(RestoreProjectVersion, {"project_id": "one", "x": 1})
    assert validation_message(both) == (
        "project_id: Input should be a valid integer, unable to parse string as an integer; "
        "x: Extra inputs are not permitted")
    assert validation_message(both, limit=1) == (
        "project_id: Input should be a valid integer, unable to parse string as an integer")


def test_at_most_five_errors_are_named_wherever_the_body_came_in():
    many = [{"type": "missing", "loc": (f"f{n}",), "msg": "Field required"} for n in range(7)]
    assert validation_message(many) == "; ".join(f"f{n}: Field required" for n in range(5))


def test_fastapis_leading_body_location_is_left_out_and_an_assertion_reads_alone():
    assert validation_message([{"type": "missing", "loc": ("body", "name"), "msg": "Field required"}]) == (
        "name: Field required")
    assert validation_message([{"type": "missing", "loc": ("body",), "msg": "Field required"}]) == (
        "body: Field required")
    said = {"type": "assertion_error", "loc": (), "msg": "Assertion failed, a before b"}
    assert validation_detail(said) == validation_message([said]) == "a before b"
    assert validation_message([]) == "body: invalid"


def test_the_bus_answers_the_same_sentence_with_its_typed_code():
    async def handler(cmd, ctx):  # never reached
        raise AssertionError("validated")

    reply = asyncio.run(run_command(handler, RestoreProjectVersion, {"project_id": 1}, CallContext(subject="s")))
    assert reply.status == 400
    assert (reply.error.code, reply.error.msg) == ("invalid_request", "give exactly one of version_id or version_num")
    both = {"project_id": "one", "x": 1}
    reply = asyncio.run(run_command(handler, RestoreProjectVersion, both, CallContext(subject="s")))
    assert reply.error.msg == validation_message(errors(RestoreProjectVersion, both))

