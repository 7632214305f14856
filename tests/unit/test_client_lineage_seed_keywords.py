"""The SDK's lineage methods take seed 000's parameter names as keywords: `project` (add_input_project,
add_output_project), `dataset` (add_input_dataset, add_output_dataset), `file` (add_input_file, add_output_file),
`project_info` (create_version, restore_version), each an id (a path for a file) or the record the SDK handed out.
A script written against the seed (`add_input_project(project=info)`) ended in TypeError ('unexpected keyword
argument'); positional calls and the SDK's earlier names (project_id=, dataset_id=, path=) keep working. What is
neither an id nor such a record (an object the body cannot carry) is refused before anything is sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from railyard_client.errors import InvalidInput
from railyard_client.lineage import Lineage


class _Session:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        self.sent.append((route, body))
        return {"versions": []}


class _Client:
    def __init__(self) -> None:
        self._session = _Session()


PROJECT = {"id": 7, "name": "cats", "workspace_id": 3}
DATASET = {"id": 11, "project_id": 7, "name": "images"}
FILE = {"path": "/runs/r1/best.onnx", "sha256": "ab", "size": 7}

# (method, seed keyword, earlier keyword, value given, field sent, value sent)
CASES = [
    ("add_input_project", "project", "project_id", PROJECT, "project_id", 7),
    ("add_output_project", "project", "project_id", 7, "project_id", 7),
    ("add_input_dataset", "dataset", "dataset_id", DATASET, "dataset_id", 11),
    ("add_output_dataset", "dataset", "dataset_id", np.int64(11), "dataset_id", 11),
    ("add_input_file", "file", "path", FILE, "path", FILE["path"]),
    ("add_output_file", "file", "path", "/runs/r1/best.onnx", "path", FILE["path"]),
    ("create_version", "project_info", "project_id", PROJECT, "project_id", 7),
    ("restore_version", "project_info", "project_id", 7, "project_id", 7),
]
IDS = [f"{case[0]}-{case[1]}" for case in CASES]


def _call(method: str, *args: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    client = _Client()
    getattr(Lineage(client, 3), method)(*args, **kwargs)
    [sent] = client._session.sent
    return sent


@pytest.mark.parametrize(("method", "seed", "earlier", "value", "field", "expected"), CASES, ids=IDS)
def test_the_seed_keyword_the_earlier_keyword_and_a_position_send_the_same(method, seed, earlier, value, field,
                                                                             expected):
    by_seed = _call(method, **{seed: value})
    assert by_seed[1][field] == expected and type(by_seed[1][field]) is type(expected)
    assert _call(method, **{earlier: value}) == by_seed
    assert _call(method, value) == by_seed


@pytest.mark.parametrize(("method", "seed", "earlier", "value", "field", "expected"), CASES, ids=IDS)
def test_both_names_or_neither_is_refused_before_sending(method, seed, earlier, value, field, expected):
    client = _Client()
    lineage = Lineage(client, 3)
    with pytest.raises(InvalidInput, match=f"{seed}.*{earlier}|{earlier}.*{seed}"):
        getattr(lineage, method)(**{seed: value, earlier: value})
    with pytest.raises(InvalidInput, match=seed):
        getattr(lineage, method)()
    assert client._session.sent == []


class _Record:
    id = 7


@pytest.mark.parametrize("value", [_Record(), True, np.bool_(True), [7], None],
                         ids=["object", "bool", "numpy-bool", "list", "none"])
def test_what_is_neither_an_id_nor_a_record_is_refused_before_sending(value):
    client = _Client()
    with pytest.raises(InvalidInput, match="project"):
        Lineage(client, 3).add_input_project(project=value)
    with pytest.raises(InvalidInput, match="file"):
        Lineage(client, 3).add_input_file(value)
    assert client._session.sent == []


def test_list_versions_takes_the_seed_project_id_and_a_record():
    assert _call("list_versions", project_id=PROJECT)[1]["project_id"] == 7
    assert _call("list_versions", 7)[1]["project_id"] == 7
