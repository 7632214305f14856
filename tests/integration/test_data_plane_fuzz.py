"""The nastiest bodies tests/unit/test_data_plane_fuzz.py found, through the real gateway to a deployed ccfraud
pipeline: records, Arrow and OIP bodies, the multipart routes and datasets/upload_rows, each answered 4xx with the
typed error code; a valid inference right after still works (no process crashed, nothing was left half-done)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import tensor_array, to_ipc_stream
from tests.integration.test_gateway_abuse import _zstd_bomb
from tests.integration.test_pipelines import deployed, onnx_outputs  # noqa: F401 - the fixture is reused
from tests.models import sample_rows
from tests.unit.test_data_plane_fuzz import REGRESSIONS_ARROW, REGRESSIONS_OIP, _arrays, _last_replaced

pytestmark = pytest.mark.integration

ARROW = "application/vnd.apache.arrow.stream"
BIG = b"1" + b"0" * 400


def _tensor_table(rows: int) -> pa.Table:
    return pa.table({"tensor": tensor_array(sample_rows(rows, seed=5))})


def _arrow_column(kind: str) -> bytes:
    """A two-row body whose one column, named as the model's input, is of an odd kind."""
    return to_ipc_stream(pa.table({"tensor": _arrays(2)[kind]}))


RECORDS = {
    "an int past a float's range among floats": b'[{"tensor":1.0},{"tensor":' + BIG + b"}]",
    "an int in uint64's range in a tensor": b'[{"tensor":[0,18446744073709551615]}]',
    "nested deeper than numpy's 64 dimensions": b'[{"tensor":' + b"[" * 100 + b"1" + b"]" * 100 + b"}]",
    "a lone surrogate key": b'[{"\\ud800":[1,2]}]',
    "no columns": b"[{}]",
    "ragged": b'[{"tensor":[[1,2],[3]]}]',
}
ARROW_BODIES = {
    **{name: REGRESSIONS_ARROW[name] for name in ("one name twice", "stream cut inside a message")},
    "a union column": _arrow_column("sparse union"),
    "a time64 column": _arrow_column("time64"),
    "a dictionary column": _arrow_column("dictionary"),
    "a column name that is not UTF-8": _last_replaced(to_ipc_stream(_tensor_table(2)), b"tensor", b"tens\xffr"),
    "a string offset past its data": _last_replaced(
        to_ipc_stream(pa.table({"tensor": _tensor_table(2)["tensor"], "s": ["x", "y"]})),
        b"\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", b"\x00\x00\x00\x00\x01\x00\x00\x00\xc8\x00\x00\x00"),
}
OIP_BODIES = {f"oip {index}": case for index, case in enumerate(REGRESSIONS_OIP)}
OIP_BODIES["a binary size not a whole number of FP32s"] = (
    b'{"inputs":[{"name":"tensor","shape":[1,29],"datatype":"FP32","parameters":{"binary_data_size":115}}]}'
    + b"\x00" * 115, "101")


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart body written by hand (clients send broken ones too): (name, filename, bytes) parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART_ROUTES = ["models/upload_and_convert", "models/upload_stream", "orchestration/upload",
                    "deployments/predict"]
MULTIPART_BODIES = {
    "no boundary": ("multipart/form-data", b"--x\r\n\r\n"),
    "a boundary never closed": ("multipart/form-data; boundary=x",
                                b'--x\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{"a'),
    "no parts": ("multipart/form-data; boundary=x", b"--x--\r\n"),
    "metadata not UTF-8, a file as text": ("multipart/form-data; boundary=x", _multipart("x", [
        ("metadata", "m.json", b"\xff\xfe{"), ("file", None, b"abc"), ("image", None, b"abc")])),
    "metadata a JSON list, an image that is not one": ("multipart/form-data; boundary=x", _multipart("x", [
        ("metadata", None, b"[1]"), ("file", "f.bin", b"\x00" * 8), ("image", "i.png", b"GIF89a")])),
    "metadata with a number past int64": ("multipart/form-data; boundary=x", _multipart("x", [
        ("metadata", None, b'{"workspace_id":' + BIG + b"}"), ("file", "f.zip", b"PK"), ("image", "i.png",
                                                                                        b"\x89PNG\r\n\x1a\n")])),
    "every field a file": ("multipart/form-data; boundary=x", _multipart("x", [
        ("name", "n", b"m"), ("workspace_id", "w", b"1"), ("file", "f.onnx", b"x")])),
}


def test_nasty_bodies_are_typed_4xx_and_the_gateway_keeps_serving(stack, alice, deployed):  # noqa: F811
    url, model = deployed["url"], deployed["name"]
    oip_url = f"{stack.base_url}/v2/models/{model}/infer"
    token = {"Authorization": f"Bearer {alice.token}"}
    wrong = []
    with httpx.Client(timeout=30) as client:
        def expect_4xx(what: str, response: httpx.Response) -> None:
            try:
                code = response.json().get("code")
            except ValueError:
                code = None
            if not (400 <= response.status_code < 500 and code in ("invalid_request", "payload_too_large")):
                wrong.append(f"{what}: {response.status_code} {response.text[:200]}")

        for name, body in RECORDS.items():
            expect_4xx(f"records {name}", client.post(url, content=body,
                                                      headers={**token, "Content-Type": "application/json"}))
        for name, body in ARROW_BODIES.items():
            expect_4xx(f"arrow {name}", client.post(url, content=body, headers={**token, "Content-Type": ARROW}))
        for name, (body, header) in OIP_BODIES.items():
            headers = {**token, "Content-Type": "application/json"}
            if header is not None:
                headers["Inference-Header-Content-Length"] = header
            expect_4xx(f"OIP {name}", client.post(oip_url, content=body, headers=headers))
        for route in MULTIPART_ROUTES:
            for name, (content_type, body) in MULTIPART_BODIES.items():
                expect_4xx(f"{route} {name}", client.post(f"{stack.api}/{route}", content=body,
                                                          headers={**token, "Content-Type": content_type}))
        # datasets/upload_rows reads Arrow as inference does: validated in full, and no compression bomb
        rows_url = f"{stack.api}/datasets/upload_rows"
        expect_4xx("upload_rows a string offset past its data", client.post(
            rows_url, params={"dataset_id": 1}, content=ARROW_BODIES["a string offset past its data"],
            headers={**token, "Content-Type": ARROW}))
        bomb = client.post(rows_url, params={"dataset_id": 1}, content=_zstd_bomb(80),
                           headers={**token, "Content-Type": "application/vnd.apache.arrow.file"})
        if bomb.status_code != 413:
            wrong.append(f"upload_rows an Arrow bomb: {bomb.status_code} {bomb.text[:200]}")
        assert not wrong, "\n".join(wrong)

        rows = sample_rows(3, seed=9)
        answer = client.post(url, content=json.dumps([{"tensor": row} for row in rows.tolist()]),
                             headers={**token, "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        got = np.array([record["out"]["dense_1"] for record in answer.json()], np.float32)
        assert np.allclose(got, onnx_outputs(rows), atol=1e-6)
        request = {"inputs": [{"name": "tensor", "shape": [3, 29], "datatype": "FP32",
                               "data": rows.reshape(-1).tolist()}]}
        answer = client.post(oip_url, json=request, headers=token)
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json()["outputs"][0]["data"], onnx_outputs(rows).reshape(-1), atol=1e-6)
