"""pipelines/create without `definition` (the seed: "definition - (REQUIRED string): Pipeline definitions, can be {}
for none") is a 400 naming the field, and nothing is created: it answered 200 with a new version whose definition
was empty (the s34 new-user walk-through), so a forgotten field replaced the pipeline's latest version. The HTTP
route and the deployer's bus subscriber validate NewPipeline; CreatePipeline, what the deployer's handler and the
monitoring service's in-process callers build, keeps its default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.http import JSON_ROUTES
from shared.errors import validation_message
from shared.messages.deployer import CreatePipeline, NewPipeline


def test_a_create_without_a_definition_is_refused_naming_the_field():
    with pytest.raises(ValidationError) as refused:
        NewPipeline.model_validate({"pipeline_id": "fraud", "workspace_id": 1})
    assert validation_message(refused.value.errors()) == "definition: Field required"
    assert "definition" in NewPipeline.model_json_schema()["required"]  # the OpenAPI body says so too


def test_an_empty_definition_and_a_definition_are_still_created():
    assert NewPipeline.model_validate({"pipeline_id": "e", "workspace_id": 1, "definition": {}}).definition == {}
    steps = {"steps": [{"ModelInference": {"models": [{"name": "m"}]}}]}
    assert NewPipeline.model_validate({"pipeline_id": "e", "workspace_id": 1, "definition": steps}).definition == steps
    assert CreatePipeline(pipeline_id="e", workspace_id=1).definition == {}  # in-process callers keep the default


def test_the_http_route_validates_the_required_definition():
    # (the deployer's bus subscriber's NewPipeline: tests/unit/test_request_bounds.py, the channels' models)
    assert {route.path: route.model for route in JSON_ROUTES}["/pipelines/create"] is NewPipeline
