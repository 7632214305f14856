"""A JSON true/false where a command has a number is a 400 naming the field (services/gateway/json_body.py
refuse_booleans_as_numbers), not read as 1 or 0: `{"workspace_id": true}` was workspace 1 (its models for a member,
"workspace 1 not found" for anyone else). Unit cases: tests/unit/test_gateway_boolean_numbers.py."""

from __future__ import annotations

import pytest

from tests.integration.conftest import post

pytestmark = pytest.mark.integration


def test_booleans_for_numbers_are_refused_over_http(stack, alice):
    for path, body, said in (
            ("models/list", {"workspace_id": True}, "workspace_id: Input should be a valid number, not true"),
            ("models/get", {"id": False}, "id: Input should be a valid number, not false"),
            ("datasets/get_rows", {"dataset_id": True}, "dataset_id: Input should be a valid number, not true"),
            ("assays/create", {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output y 0",
                               "alert_threshold": 0.25,
                               "workspace_id": alice.workspace_id, "summarizer": {"num_bins": True},
                               "baseline": {"Fixed": {"pipeline": "p", "model": "m",
                                                      "start_at": "2026-01-01T00:00:00Z",
                                                      "end_at": "2026-01-02T00:00:00Z"}},
                               "window": {"pipeline": "p", "model": "m", "width": "24 hours"}},
             "summarizer.num_bins: Input should be a valid number, not true")):
        refused = post(stack, path, alice.token, body)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json() == {"code": "invalid_request", "msg": said}
    # a boolean field keeps its boolean: this reaches the service (no such assay)
    assert post(stack, "assays/set_active", alice.token, {"id": 987654, "active": False}).status_code == 404
    listed = post(stack, "models/list", alice.token, {"workspace_id": alice.workspace_id})
    assert listed.status_code == 200, listed.text
