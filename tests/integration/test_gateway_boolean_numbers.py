"""A JSON true/false where a command has a number is a 400 naming the field (shared/request_values.py
refuse_lax_scalars), not read as 1 or 0: `{"workspace_id": true}` was workspace 1 (its models for a member,
"workspace 1 not found" for anyone else). Unit cases: tests/unit/test_gateway_boolean_numbers.py."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import post

pytestmark = pytest.mark.integration


def test_booleans_for_numbers_are_refused_over_http(stack, alice):
    for path, body, said in (
            ("models/list", {"workspace_id": True}, "workspace_id: Input should be a valid number, not true"),
            ("models/get", {"id": False}, "id: Input should be a valid number, not false"),
            ("datasets/get_rows", {"dataset_id": True}, "dataset_id: Input should be a valid number, not true"),
            # validates its own body too (it answers the artifact's bytes): was workspace 1's model
            ("models/download", {"workspace_id": True, "name": "m"},
             "workspace_id: Input should be a valid number, not true"),
            # the log routes read their own bodies (get_logs forwards it as it came)
            ("pipelines/get_logs", {"pipeline_id": "p", "workspace_id": True},
             "workspace_id: Input should be a valid number, not true"),
            ("pipelines/list_quarantined_logs", {"limit": True}, "limit: Input should be a valid number, not true"),
            # and anything but true/false where it has a boolean: {"active": "yes"} resumed an assay
            ("assays/set_active", {"id": 1, "active": "yes"}, "active: Input should be a valid boolean"),
            ("maintenance/collect_objects", {"dry_run": "false"}, "dry_run: Input should be a valid boolean"),
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
    # multipart uploads' JSON metadata (a model, an orchestration zip)
    for path, name in (("models/upload_and_convert", "m.onnx"), ("orchestration/upload", "o.zip")):
        metadata = {"name": "boolean", "workspace_id": True, "visibility": "private",
                    "conversion": {"framework": "onnx", "python_version": "3.8", "requirements": []}}
        if path == "orchestration/upload":
            metadata = {"workspace_id": True, "name": "boolean"}
        refused = httpx.post(f"{stack.api}/{path}", headers={"Authorization": f"Bearer {alice.token}"}, timeout=60,
                             files={"metadata": (None, json.dumps(metadata), "application/json"),
                                    "file": (name, b"whatever", "application/octet-stream")})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["msg"] == "metadata.workspace_id: Input should be a valid number, not true"
    # a boolean field keeps its boolean: this reaches the service (no such assay)
    assert post(stack, "assays/set_active", alice.token, {"id": 987654, "active": False}).status_code == 404
    listed = post(stack, "models/list", alice.token, {"workspace_id": alice.workspace_id})
    assert listed.status_code == 200, listed.text
