"""The step `railyard-ml deploy railyard` packages, as the engine runs it (the package unpacked, its
`railyard_ml_step.py` loaded with the engine's `mac` Inference classes): input that is the request's fault (no
`task` column, a task that is not JSON) is said as such. Before, the engine's answer was "the model failed: it
raised KeyError" / "JSONDecodeError" with a traceback of railyard_ml's internals."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from railyard_ml.railyard_step import package

from tests.ml_backend.conftest import REPO
from tests.ml_backend.test_continuous_training import LS1_STYLE, backend_folder
from tests.ml_backend.test_examples import IMAGE_CONFIG


@pytest.fixture
def inference(tmp_path, monkeypatch):
    archive, _ = package(backend_folder(tmp_path, LS1_STYLE), label_config=IMAGE_CONFIG)
    unpacked = tmp_path / "served"
    zipfile.ZipFile(io.BytesIO(archive)).extractall(unpacked)
    monkeypatch.syspath_prepend(str(REPO / "services" / "engine" / "compat"))  # the engine's `mac`
    spec = importlib.util.spec_from_file_location("railyard_ml_step", unpacked / "backend" / "railyard_ml_step.py")
    step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step)
    monkeypatch.delitem(sys.modules, "counter", raising=False)
    return step.LabelStudioBackendBuilder().create(SimpleNamespace(model_path=str(unpacked / "backend")))


def test_a_task_column_predicts(inference):
    answer = inference.predict({"task": np.array([json.dumps({"data": {"image": "x.png"}}), json.dumps({})],
                                                 dtype=object)})
    assert [json.loads(p)["result"] for p in answer["prediction"]] == [[], []]  # untrained: no choice yet
    assert list(answer["score"]) == [1.0, 1.0]


def test_no_task_column_is_named(inference):
    with pytest.raises(ValueError, match=r"the input needs a column 'task' .*; got 'text'"):
        inference.predict({"text": np.array(["great"], dtype=object)})


def test_a_task_that_is_not_json_is_named(inference):
    with pytest.raises(ValueError) as raised:
        inference.predict({"task": np.array([json.dumps({"image": "a.png"}), "great"], dtype=object)})
    assert type(raised.value) is ValueError  # not json's JSONDecodeError from inside railyard_ml
    assert str(raised.value).startswith("row 1: 'task' is not JSON (Expecting value")
