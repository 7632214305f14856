"""The traceback a user's model writes for the replica's stderr excerpt (the end of a request's error, docs/security.md)
names each file by its name, or a library's by its path in its package, never by the host's absolute path. Session
37's walk-through: the shipped text classifier deployed with `railyard-ml deploy railyard` answered a task without
text with "... its stderr ends with: ... File "<clone>/.railyard/engine-work/my-backend-4/92dc8035-0/<sha>.byop/
backend/text_classifier.py", line 58 ... File "<clone>/ml_backend/railyard_ml/railyard_step.py" ...": the server's
data directory, a deployment's work folder and the platform's installation, to any member calling the pipeline
(a Python step's own frames were already named `<python step step.py>`; a frame of a library, of the platform's
railyard_ml or of a deployed package's own files carried the full path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from services.engine.runtimes import PythonStepRuntime, shown_file
from shared.errors import InvalidRequest
from tests.unit.text_classifier_deployed import REPO, deployed  # noqa: F401 (the fixture)


def no_host_path(written: str, *roots: Path) -> None:
    for root in (REPO, Path(sys.prefix), *roots):
        assert str(root) not in written, written
    assert 'File "/' not in written, written


def test_a_python_steps_traceback_names_its_files_not_where_they_are(tmp_path, capsys):
    script = tmp_path / "cache" / "step.py"
    script.parent.mkdir()
    script.write_text("import pandas as pd\n\ndef wallaroo_json(data):\n    return pd.DataFrame({'a': [1]})['b']\n")
    step = PythonStepRuntime(script)
    step.load()
    with pytest.raises(InvalidRequest):
        step.predict(pa.table({"x": [1]}))
    written = capsys.readouterr().err
    no_host_path(written, tmp_path)
    assert 'File "<python step step.py>", line 4, in wallaroo_json' in written, written  # as it was compiled
    assert 'File "pandas/core/frame.py"' in written, written  # a library's file: from its package on
    assert written.rstrip().endswith("KeyError: 'b'"), written


def test_a_deployed_backends_traceback_shows_no_host_path(deployed, tmp_path, capsys):  # noqa: F811
    capsys.readouterr()
    with pytest.raises(InvalidRequest):
        deployed.predict(pa.table({"task": [json.dumps({"data": {"body": "great"}})]}))
    written = capsys.readouterr().err
    no_host_path(written, tmp_path)
    # the package's own file by its path in the archive: which of its files, none of the host's folders
    assert 'File "backend/text_classifier.py"' in written and "in text_of" in written, written
    with pytest.raises(InvalidRequest):
        deployed.predict(pa.table({"text": ["great"]}))  # refused by the platform's railyard_ml step
    written = capsys.readouterr().err
    no_host_path(written, tmp_path)
    assert 'File "railyard_step.py"' in written, written


def test_shown_file():
    assert shown_file("/opt/venv/lib/python3.11/site-packages/sklearn/base.py") == "sklearn/base.py"
    assert shown_file("/usr/lib/python3/dist-packages/numpy/core/x.py") == "numpy/core/x.py"
    assert shown_file("/srv/data/engine-work/d-1/r-0/abc.byop/backend/model.py") == "backend/model.py"
    # two files of one name in a deployed package are told apart; a library it ships is its own file too
    assert shown_file("/srv/d/w/abc.byop/model/__init__.py") != shown_file("/srv/d/w/abc.byop/utils/__init__.py")
    assert shown_file("/srv/d/w/abc.byop/vendor/site-packages/lib/a.py") == "vendor/site-packages/lib/a.py"
    assert shown_file("/srv/x.byop/engine-work/abc.byop/m.py") == "m.py"  # nothing of the host's path before it
    assert shown_file("/usr/lib/python3.11/json/decoder.py") == "decoder.py"
