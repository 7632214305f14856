"""The SDK's upload_model answers the version its upload made, read by the `model_version` the registry's upload answer
names beside the seed's model id. Before, it took the newest version whose sha256 was the uploaded bytes', else the
newest: a converted framework's version (sklearn, xgboost) stores the converted bytes (none while converting), so
another upload of the same name that landed between the answer and the SDK's read was taken for this one."""

from __future__ import annotations

import pytest

from tests.integration.conftest import sdk_client
from tests.models import ccfraud_onnx, ccfraud_pickle

pytestmark = pytest.mark.integration


def test_upload_model_answers_its_own_version_when_another_upload_of_the_name_lands_meanwhile(stack, alice):
    client, other = sdk_client(stack, alice), sdk_client(stack, alice)
    raced: list = []
    answers: list[dict] = []

    def another_upload_first(request) -> None:
        # between the converted upload's answer and the SDK's read of the versions: a concurrent upload of the name
        if request.url.path.endswith("/models/list_versions") and not raced:
            raced.append(other.current_workspace().upload_model("raced", ccfraud_onnx(), wait=False))

    def keep_answer(response) -> None:
        if response.request.url.path.endswith("/models/upload_and_convert"):
            response.read()
            answers.append(response.json())

    client._session.http.event_hooks["request"].append(another_upload_first)
    client._session.http.event_hooks["response"].append(keep_answer)
    try:
        mine = client.current_workspace().upload_model("raced", ccfraud_pickle(), framework="sklearn", wait=False)
        listed = client.get_model("raced").versions()
    finally:
        client.close()
        other.close()
    assert len(raced) == 1 and raced[0].framework == "onnx" and len(listed) == 2
    assert [v.framework for v in listed] == ["sklearn", "onnx"]  # oldest first: the concurrent one is the newest
    inserted = answers[0]["insert_models"]["returning"][0]["models"][0]
    assert inserted == {"id": listed[0].model_pk, "model_version": listed[0].version}  # the seed's id, and the version
    # on the old SDK: the onnx version (the newest; the converting sklearn version has no sha yet)
    assert (mine.version, mine.framework) == (listed[0].version, "sklearn")
    assert raced[0].version == listed[1].version
