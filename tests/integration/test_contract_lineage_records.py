"""Seed 000 takes a project as "Project ID or ProjectInfo" (add_input_project, create_version's and restore_version's
`project_info`), a dataset as "Dataset ID or DatasetInfo" and a file as "File ID, FileInfo, or path": a script
passes the record it was handed, not only its id. The SDK's Lineage takes the records it hands out (the dicts of
create_project, create_dataset, put_file) wherever it takes their id or path; before, each went to the server as
the id itself and came back 400 "project_id: Input should be a valid integer"."""

from __future__ import annotations

import pytest
from railyard_client.errors import InvalidInput
from railyard_client.lineage import Lineage

from tests.integration.conftest import requests_to, sdk_client


def test_the_records_the_sdk_hands_out_stand_for_their_ids(stack, alice):
    wl = sdk_client(stack, alice)
    lineage = Lineage(wl, alice.workspace_id)
    project = lineage.create_project("cats")
    images = lineage.create_dataset(project["id"], "images", kind="images")
    weights = lineage.put_file("/runs/run-1/best.onnx", b"weights")

    version = lineage.create_version(project_info=project, version_title="labeled")  # seed 000's names
    assert version["project_id"] == project["id"] and version["number"] == 1
    assert [v["id"] for v in lineage.list_versions(project)] == [version["id"]]

    linked = lineage.add_input_project(project, version_id=version["id"], task_id="run-1")
    assert linked["node"]["kind"] == "project_version" and linked["main_node"]["kind"] == "task_run"
    assert lineage.add_input_dataset(dataset=images, task_id="run-1")["node"]["data"]["project_id"] == project["id"]
    assert lineage.add_output_file(file=weights, model_weight=True, task_id="run-1")["node"]["ref"] == weights["path"]
    assert lineage.add_output_project(project=project, task_id="run-1")["node"]["kind"] == "project"

    restored = lineage.restore_version(project_info=project, version_num=1, name="cats-again")
    assert restored["project"]["restored_from_version"] == version["id"]

    drawn = lineage.graph("task_run", "run-1", depth=1)
    kinds = {node["kind"] for node in drawn["nodes"]}
    assert {"project_version", "dataset", "file", "project", "task_run"} <= kinds

    # a record without the id it stands for is refused before anything is sent
    sent = requests_to(wl, "workflow/add_input_dataset", "workflow/add_input_file", "projects/create_version")
    with pytest.raises(InvalidInput, match="a record without 'id'"):
        lineage.add_input_dataset({"name": "images"}, task_id="run-1")
    with pytest.raises(InvalidInput, match="a record without 'path'"):
        lineage.add_input_file({"size": 7}, task_id="run-1")
    with pytest.raises(InvalidInput, match="a record without 'id'"):
        lineage.create_version({"name": "cats"})
    assert sent == []
    wl.close()
