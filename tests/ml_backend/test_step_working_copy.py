"""StepModel.load's working copy of the model (a railyard-ml-* folder in the temporary directory) goes with the
loaded model, and with a load that fails: every load left one behind for good (the replicas' loads, the package
check's failed builds, the tests'), and a host running the suite again and again gathered them."""

from __future__ import annotations

import gc
import io
import tempfile
import zipfile

import pytest
from railyard_ml import railyard_step
from railyard_ml.railyard_step import StepModel, package

from tests.ml_backend.test_continuous_training import LS1_STYLE, backend_folder
from tests.ml_backend.test_examples import IMAGE_CONFIG


@pytest.fixture
def unpacked(tmp_path, monkeypatch):
    archive, _ = package(backend_folder(tmp_path, LS1_STYLE), label_config=IMAGE_CONFIG)
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path / "served")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.syspath_prepend(str(tmp_path / "served" / "backend"))  # StepModel.load adds it: taken out after
    return tmp_path / "served" / "backend", temporary


def test_the_working_copy_goes_with_the_loaded_model(unpacked):
    folder, temporary = unpacked
    step = StepModel.load(folder)
    assert [p.name.startswith("railyard-ml-") for p in temporary.iterdir()] == [True]
    assert step.model.model_dir.startswith(str(temporary))
    del step
    gc.collect()
    assert list(temporary.iterdir()) == []


def test_a_failed_load_leaves_no_working_copy(unpacked, monkeypatch):
    folder, temporary = unpacked

    def refuse(*args, **kwargs):
        raise RuntimeError("the project's cache cannot be made")

    monkeypatch.setattr(railyard_step, "ProjectCache", refuse)
    with pytest.raises(RuntimeError, match="cache cannot be made"):
        StepModel.load(folder)
    assert list(temporary.iterdir()) == []
