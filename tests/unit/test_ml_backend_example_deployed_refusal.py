"""The shipped text classifier (examples/ml_backend/text_classifier) deployed on Railyard, as the engine runs it: its
`railyard-ml deploy railyard` package loaded by the engine's ByopRuntime (what the sandboxed worker runs). A task
without `data.text` is the request's fault there too: the engine answers 400 `invalid_request` with the example's
own words after its "the model failed: it raised InvalidRequest: " (users_code_failed), as the README says. It was
scikit-learn's "'NoneType' object has no attribute 'lower'" (also a 400: the engine answers every exception of a
user's model so, with its words)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from railyard_ml.railyard_step import package

from services.engine.runtimes import ByopRuntime
from shared.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "ml_backend" / "text_classifier" / "text_classifier.py"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text" choice="single">'
          '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>')


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    """The example's package loaded as the engine loads it (sys.path and the modules it adds undone after)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    folder = tmp_path / "tc"
    made = subprocess.run([str(Path(sys.executable).with_name("railyard-ml")), "init", str(folder), "--script",
                           str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    archive, _ = package(folder, label_config=CONFIG)
    (tmp_path / "tc.zip").write_bytes(archive)
    (tmp_path / "work").mkdir()
    runtime = ByopRuntime(tmp_path / "tc.zip", tmp_path / "work")
    runtime.load()
    yield runtime
    runtime.unload()
    for name in set(sys.modules) - before:
        if name.startswith("railyard_byop_"):
            del sys.modules[name]


def test_a_task_without_text_is_a_400_in_the_examples_words(deployed):
    good = deployed.predict(pa.table({"task": [json.dumps({"data": {"text": "great"}})]}))
    assert good.num_rows == 1 and json.loads(good.column("prediction")[0].as_py())["result"]
    for task, said in (({"data": {"body": "great"}}, "its data has 'body'"),
                       ({"id": 4, "data": {"text": 5}}, "data.text is int")):
        with pytest.raises(InvalidRequest) as refused:
            deployed.predict(pa.table({"task": [json.dumps(task)]}))
        assert refused.value.status == 400 and refused.value.code == "invalid_request"
        assert str(refused.value).startswith("the model failed: it raised InvalidRequest: task 0 (id "), refused.value
        assert "has no text to classify: it needs data.text as a string" in str(refused.value), refused.value
        assert said in str(refused.value), refused.value
