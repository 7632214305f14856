"""Pure parts of services/monitoring/predictions.py: where the image configuration is read, how the engine's answer
splits into the champion's and a challenger's outputs, which model version answered, and monitor's timestamps."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from services.monitoring.predictions import _answered_by, _predicted_at, _row_outputs, image_config
from shared.errors import Conflict, InvalidRequest
from shared.messages.monitoring import ModelVersionRef
from tests.image_models import digits_image_config

A = {"name": "a", "version": "1", "sha": "s1"}
B = {"name": "b", "version": "2", "sha": "s2"}


def test_the_image_configuration_is_the_model_steps():
    image = digits_image_config()
    assert image_config({"steps": [{"ModelInference": {"models": [A], "image": image}}]}).input == "pixels"
    shadowed = {"steps": [{"ModelInference": {"models": [B]}},
                          {"ShadowDeploy": {"champion": A, "challengers": [B], "image": image}}]}
    assert image_config(shadowed).kind == "classification"  # the ShadowDeploy step is the model step
    assert image_config({"steps": [{"ModelInference": {"models": [A]}}]}) is None
    with pytest.raises(Conflict, match="labels"):
        image_config({"steps": [{"ModelInference": {"models": [A], "image": image | {"labels": []}}}]})


def test_the_answer_splits_into_champion_and_challenger_outputs():
    answer = pa.table({"label": [3], "probabilities": [[0.1, 0.9]], "out_b.label": [1],
                       "out_b.probabilities": [[0.6, 0.4]]})
    champion, challenger = _row_outputs(answer, None), _row_outputs(answer, "out_b.")
    assert set(champion) == {"label", "probabilities"} and champion["probabilities"].tolist() == [0.1, 0.9]
    assert set(challenger) == {"label", "probabilities"} and challenger["label"].tolist() == 1
    assert _row_outputs(answer, "out_c.") == {}


def test_the_model_that_answered_is_the_champion_unless_the_replica_names_another():
    champion = ModelVersionRef(**A)
    assert _answered_by({"last_model": json.dumps({"model_name": "a", "model_sha": "s1"})}, champion) == A
    assert _answered_by({}, champion) == A
    swapped = _answered_by({"last_model": json.dumps({"model_name": "a", "model_sha": "s9"})}, champion)
    assert swapped == {"name": "a", "version": None, "sha": "s9"}


def test_monitor_timestamps_are_seconds_since_the_epoch_in_a_sane_range():
    assert _predicted_at(1_700_000_000.5).timestamp() == 1_700_000_000.5
    for wrong in (12.0, 1e12, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="between 2000 and tomorrow"):
            _predicted_at(wrong)


def test_the_served_version_s_definition_is_found_among_the_pipeline_s_versions():
    from services.monitoring.predictions import served_definition

    old = {"steps": [{"ShadowDeploy": {"champion": A, "challengers": [B]}}]}
    versions = [{"id": 1, "version": "v-old", "definition": old}, {"id": 2, "version": "v-new", "definition": {}}]
    assert served_definition(versions, "v-old") == old
    assert served_definition(versions, "v-gone") is None


def test_a_served_version_older_than_the_record_lists_is_read_with_versions_cursor(monkeypatch):
    """A pipeline record whose versions pass 4 MiB lists the newest and the deployed one (2a3bfb2): the version a
    replica still served during a swap may be older, and its challengers made the shadow outputs, so the monitoring
    service reads the older versions with versions_cursor rather than taking the new version's definition."""
    import asyncio
    from types import SimpleNamespace

    from services.monitoring import predictions
    from shared import subjects
    from shared.messages.deployer import PipelineRecord, Pipelines

    old = {"steps": [{"ShadowDeploy": {"champion": A, "challengers": [B]}}]}
    new = {"steps": [{"ModelInference": {"models": [A]}}]}

    def version(key, definition):
        return {"id": key, "version": f"v{key}", "definition": definition, "created_at": ""}

    def record(versions, cursor=None):
        return PipelineRecord(id=4, name="p", workspace_id=1, created_at="", updated_at="", versions=versions,
                              deployment={"id": 3, "pipeline_version_pk_id": 9}, versions_cursor=cursor,
                              versions_omitted=8 if cursor else None)

    asked = []

    async def request(broker, subject, cmd, *, token, timeout, reply_model):
        asked.append((subject, cmd.model_dump()))
        if subject == subjects.DEPLOYER_PIPELINES_LIST:  # the workspace's list: the cut record
            return Pipelines(pipelines=[record([version(9, new)], "9")])
        assert subject == subjects.DEPLOYER_PIPELINES_GET
        if cmd.versions_cursor is None:
            return record([version(9, new)], "9")
        if cmd.versions_cursor == "9":
            return record([version(k, {}) for k in (5, 6, 7, 8)], "5")
        assert cmd.versions_cursor == "5"
        return record([version(k, old if k == 2 else {}) for k in (1, 2, 3, 4)])

    for module in ("services.monitoring.predictions", "shared.pipeline_pages"):
        if hasattr(__import__(module, fromlist=["x"]), "request"):
            monkeypatch.setattr(f"{module}.request", request)
    route = SimpleNamespace(pipeline_version="v9", workspace_id=1)
    view = SimpleNamespace(route=route, pipeline_id=4, definition=new)
    deps = SimpleNamespace(broker=None, timeout=1.0)
    assert asyncio.run(predictions._served(deps, "t", view, {"pipeline_version": "v2"})) == old
    assert asyncio.run(predictions._served(deps, "t", view, {"pipeline_version": "v9"})) == new
    assert asyncio.run(predictions._served(deps, "t", view, {"pipeline_version": "gone"})) == new  # as before


class _Untouchable:
    """A store, pool or bus that fails the test when anything reaches it."""

    def __getattr__(self, name):
        raise AssertionError(f"{name} was reached: something was written")


def _row(prediction, shadow=None):
    import uuid
    from datetime import UTC, datetime

    from services.monitoring.predictions_store import PredictionRow

    return PredictionRow(
        id=uuid.uuid4(), deployment_id=1, workspace_id=1, origin="predict", source=None, tags=[], model_version=A,
        shadow_model_version=B if shadow else None, kind="detection", prediction=prediction,
        shadow_prediction=shadow, latency=0.1, shadow_latency=0.2 if shadow else None, height=8, width=8,
        content_type="image/png", image_sha256="", features={}, predicted_at=datetime.now(UTC), filename=None,
        pipeline_version="1")


def test_an_answer_that_is_not_a_prediction_format_writes_nothing():
    import asyncio
    from types import SimpleNamespace

    from services.monitoring.predictions import _formatted, _keep

    untouchable = _Untouchable()
    deps = SimpleNamespace(objects=untouchable, pool=untouchable, broker=untouchable, timeout=1.0)
    too_many = {"detection_classes": [0] * 1001, "detection_scores": [0.5] * 1001,
                "detection_boxes": [[0, 0, 1, 1]] * 1001}
    with pytest.raises(Exception) as raised:
        asyncio.run(_keep(deps, None, _row(too_many), b"png", "dep", ["a"], "lake", owner="u"))
    assert raised.value.code == "inference_failed" and "nothing was stored" in raised.value.msg
    fits = {"detection_classes": [0], "detection_scores": [0.5], "detection_boxes": [[0, 0, 1, 1]]}
    row = _row(fits, shadow=too_many)  # a challenger's answer that does not fit is left out, as a failed one's
    prediction, shadow = _formatted(row)
    assert prediction.detection_classes == [0] and shadow is None
    assert row.shadow_prediction is None and row.shadow_model_version is None and row.shadow_latency is None


def test_a_versions_cursor_answered_again_ends_the_served_version_s_search(monkeypatch):
    """pipelines/get answering a versions_cursor it answered before, not just the last one (a cycle 9, 5, 9: a deployer
    bug or a proxy that caches), ends the search with the deployment's definition, as an immediately repeated one
    did, instead of asking the same pages for ever (shared.paging.pages' check)."""
    import asyncio
    from types import SimpleNamespace

    from services.monitoring import predictions
    from shared import subjects
    from shared.messages.deployer import PipelineRecord

    new = {"steps": [{"ModelInference": {"models": [A]}}]}
    answered = {None: "9", "9": "5", "5": "9"}
    asked = []

    async def request(broker, subject, cmd, *, token, timeout, reply_model):
        assert subject == subjects.DEPLOYER_PIPELINES_GET
        asked.append(cmd.versions_cursor)
        assert len(asked) <= 10, f"still asking pipelines/get after 10 requests: {asked}"
        cursor = answered[cmd.versions_cursor]
        return PipelineRecord(id=4, name="p", workspace_id=1, created_at="", updated_at="",
                              versions=[{"id": int(cursor), "version": "v", "definition": {}, "created_at": ""}],
                              deployment={"id": 3, "pipeline_version_pk_id": 9}, versions_cursor=cursor)

    for module in ("services.monitoring.predictions", "shared.pipeline_pages"):
        if hasattr(__import__(module, fromlist=["x"]), "request"):
            monkeypatch.setattr(f"{module}.request", request)
    view = SimpleNamespace(route=SimpleNamespace(pipeline_version="v9", workspace_id=1), pipeline_id=4, definition=new)
    deps = SimpleNamespace(broker=None, timeout=1.0)
    assert asyncio.run(predictions._served(deps, "t", view, {"pipeline_version": "v2"})) == new
    assert asked == [None, "9", "5"]
