"""Seed 001's models/attach_registry_to_workspace and remove_registry_from_workspace bodies (`{'id': ...,
'workspace_id': ...}`) with a null id, over HTTP: a 400 that names `id`, the field the body sent. It said
"registry_id is required" (j2's contract journey, session 27). Nothing is attached or removed."""

from __future__ import annotations

import pytest

from tests.integration.conftest import post

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("route", ["models/attach_registry_to_workspace", "models/remove_registry_from_workspace"])
def test_a_null_id_is_a_400_naming_id(stack, alice, route):
    response = post(stack, route, alice.token, {"id": None, "workspace_id": alice.workspace_id})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and body["msg"].startswith("id (or registry_id) is required: "), body
    listed = post(stack, "models/list_registries", alice.token, {"workspace_id": alice.workspace_id})
    assert listed.status_code == 200 and listed.json() == [], listed.text  # nothing attached
