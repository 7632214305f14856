"""The gateway's JSON command routes refuse a JSON true/false where the command has a number
(services/gateway/json_body.py refuse_booleans_as_numbers): pydantic's lax mode reads them as 1 and 0, so
`{"workspace_id": true}` listed workspace 1's models. Fields that are booleans or free-form (Any) keep theirs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from services.gateway.json_body import refuse_booleans_as_numbers
from shared.errors import InvalidRequest
from shared.messages.assays import SetAssayActive


class Inner(BaseModel):
    bins: int = 5
    weight: float | None = None
    free: Any = None


class Outer(BaseModel):
    workspace_id: int = 0
    active: bool = False
    inner: Inner = Inner()
    items: list[Inner] = []
    ids: list[int] = []
    settings: dict[str, Any] = {}


@pytest.mark.parametrize(("body", "place"), [
    ({"workspace_id": True}, "workspace_id: Input should be a valid number, not true"),
    ({"inner": {"bins": False}}, "inner.bins: "),
    ({"inner": {"weight": True}}, "inner.weight: "),
    ({"items": [{"bins": 3}, {"bins": True}]}, "items.1.bins: "),
    ({"ids": [1, True]}, "ids.1: "),
])
def test_a_boolean_where_a_number_is_is_refused(body, place):
    validated = Outer.model_validate(body)  # what pydantic alone makes of it: no error, a 1 or a 0
    with pytest.raises(InvalidRequest) as refused:
        refuse_booleans_as_numbers(body, validated)
    assert str(refused.value).startswith(place)


@pytest.mark.parametrize("body", [
    {"workspace_id": 2, "active": True}, {"inner": {"free": True, "bins": 7}}, {"settings": {"x": True}},
    {"items": [{"bins": 1}], "ids": [1, 2]}, {"unknown": True},
])
def test_booleans_where_the_command_takes_them_and_numbers_pass(body):
    refuse_booleans_as_numbers(body, Outer.model_validate({k: v for k, v in body.items() if k in Outer.model_fields}))


def test_a_real_command():
    with pytest.raises(InvalidRequest, match="^id: "):
        refuse_booleans_as_numbers({"id": True, "active": False}, SetAssayActive.model_validate({"id": True,
                                                                                                "active": False}))
    refuse_booleans_as_numbers({"id": 1, "active": False}, SetAssayActive.model_validate({"id": 1, "active": False}))
