"""The SDK refuses an input of the wrong type with its typed InvalidInput and what to give, before sending anything,
as it does for `Pipeline.infer` ("cannot infer from int: give a DataFrame, ..."). Session 37's walk-through:
`workspace.upload_model("m1", 123)` raised AttributeError "'int' object has no attribute 'seek'", and
`pipeline.infer_v2("x")` / `infer_v2(np.zeros((1, 29)))` AttributeError "'str' object has no attribute 'items'"
(the README documents a dict of named arrays: `pipeline.infer_v2({"tensor": [[0.1] * 29]})`)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from railyard_client import data
from railyard_client.errors import InvalidInput
from railyard_client.models import upload_model


class NoServer:
    def send(self, *args, **kwargs):
        raise AssertionError("nothing may be sent")


@pytest.mark.parametrize("source", [123, None, 1.5, ["model.onnx"]])
def test_an_upload_of_something_that_is_not_a_file_is_refused_before_sending(source):
    with pytest.raises(InvalidInput, match="give a file path, bytes or a file open in binary mode"):
        upload_model(NoServer(), 1, "m1", source)


def test_a_file_open_in_text_mode_is_refused_with_the_mode_to_use(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    with open(path) as text, pytest.raises(InvalidInput, match=r"model.onnx is open in text mode.*'rb'"):
        upload_model(NoServer(), 1, "m1", text)
    with pytest.raises(InvalidInput, match="text mode"):
        upload_model(NoServer(), 1, "m1", io.StringIO("onnx"))


@pytest.mark.parametrize("inputs", ["x", np.zeros((1, 29), dtype=np.float32), [[0.1] * 29], 3])
def test_oip_inputs_that_are_not_named_arrays_are_refused(inputs):
    with pytest.raises(InvalidInput, match=r"give a dict of named arrays .*or a DataFrame"):
        data.oip_request(inputs)


def test_named_arrays_and_a_dataframe_still_make_a_request():
    request = data.oip_request({"tensor": [[0.1] * 29]})
    assert request["inputs"][0]["name"] == "tensor" and request["inputs"][0]["shape"] == [1, 29]
    frame = data.oip_request(pd.DataFrame({"tensor": [np.full(29, 0.1)]}))
    assert frame["inputs"][0]["shape"] == [1, 29]
