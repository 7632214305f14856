"""The SDK's Registry.upload_model (models/upload_from_registry) answers the version its copy made, as
Workspace.upload_model does: the registry's answer names it (`model_version` beside the seed's `model_id`). Before,
the SDK answered the model id (an int) alone, and the HTTP answer named no version, so a script had to guess which
version of the name was the copy (the newest may be another upload's). Against a real `mlflow server`
(test_mlflow_registry's fixtures)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import sdk_client
from tests.integration.test_mlflow_registry import mlflow_url, registry  # noqa: F401 - fixtures
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration


def test_a_registry_copy_answers_its_own_version_when_another_upload_of_the_name_lands_meanwhile(
        stack, alice, registry):  # noqa: F811 - the fixture
    client, other = sdk_client(stack, alice), sdk_client(stack, alice)
    raced: list = []
    answers: list[dict] = []

    def another_upload_first(request) -> None:
        # between the copy's answer and the SDK's read of the versions: a concurrent upload of the name
        if request.url.path.endswith("/models/list_versions") and not raced:
            raced.append(other.current_workspace().upload_model("copied", ccfraud_onnx(), wait=False))

    def keep_answer(response) -> None:
        if response.request.url.path.endswith("/models/upload_from_registry"):
            response.read()
            answers.append(response.json())

    client._session.http.event_hooks["request"].append(another_upload_first)
    client._session.http.event_hooks["response"].append(keep_answer)
    try:
        (mlflow,) = [r for r in client.current_workspace().registries() if r.id == registry]
        pickle = next(a for a in mlflow.artifacts("wine-quality", "1") if a["path"].endswith("model.pkl"))
        mine = mlflow.upload_model(alice.workspace_id, "copied", pickle["full_path"], framework="sklearn")
        listed = client.get_model("copied").versions()
    finally:
        client.close()
        other.close()
    assert len(raced) == 1 and [v.framework for v in listed] == ["sklearn", "onnx"]  # the concurrent one is newest
    assert answers == [{"model_id": listed[0].model_pk, "model_version": listed[0].version}]
    # the old SDK answered the model id (an int): no version, and the newest was another upload's
    assert (mine.version, mine.framework, mine.status, mine.model_pk) == (listed[0].version, "sklearn", "ready",
                                                                         listed[0].model_pk)
