"""The SDK's seed-003 prediction methods (client/railyard_client/monitoring_predictions.py) build the bodies the
routes take: the image base64 (above INLINE_IMAGE_BYTES a multipart file part), tags as a list, the content type
given or guessed, PredictionFormats as dicts, `shadow_raw_predictions` as the old name of `shadow_prediction`; bad
input is refused before anything is sent."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
from railyard_client.errors import InvalidInput
from railyard_client.monitoring_predictions import (
    INLINE_IMAGE_BYTES,
    DeploymentPredictions,
    SupportedContentType,
    is_image_file,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"rest"


class Recorder(DeploymentPredictions):
    name = "digits-7"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self._session = self

    def post(self, route: str, body: dict) -> dict:
        self.sent.append((route, body))
        return {"id": "x"}


def test_predict_bytes_and_predict_image_send_the_image_base64(tmp_path):
    deployment = Recorder()
    deployment.predict_bytes("frame.png", PNG, tags="cam", source="camera-1")
    path = tmp_path / "shot.png"
    path.write_bytes(PNG)
    deployment.predict_image(path, tags=["a", "b"])
    (route, first), (_, second) = deployment.sent
    assert route == "deployments/predict_bytes" and base64.b64decode(first["image"]) == PNG
    assert first | {"image": ""} == {"deployment": "digits-7", "image": "", "filename": "frame.png", "tags": ["cam"],
                                     "source": "camera-1"}
    assert second["filename"] == "shot.png" and second["tags"] == ["a", "b"] and "source" not in second
    with pytest.raises(InvalidInput):
        deployment.predict_bytes("empty.png", b"")


def test_monitor_guesses_the_content_type_and_maps_the_old_shadow_name(tmp_path):
    deployment = Recorder()
    path = tmp_path / "shot.jpg"
    path.write_bytes(b"\xff\xd8\xff...")
    fmt = {"detection_classes": [1], "detection_scores": [0.5]}
    deployment.monitor(path, 0.1, 8, 8, fmt, tags=["t"], timestamp=5.0, model_version="arm-b",
                       shadow_raw_predictions=fmt, shadow_latency=0.2)
    route, body = deployment.sent[0]
    assert route == "deployments/monitor_bytes" and body["content_type"] == "image/jpeg"
    assert body["shadow_prediction"] == fmt and body["timestamp"] == 5.0 and body["model_version"] == {"name": "arm-b"}
    deployment.monitor_bytes(PNG, SupportedContentType.PNG, "f.png", 0.1, 8, 8, fmt)
    assert deployment.sent[1][1]["content_type"] == "image/png" and "shadow_prediction" not in deployment.sent[1][1]
    assert "model_version" not in deployment.sent[1][1]
    unknown = tmp_path / "shot.bin"
    unknown.write_bytes(PNG)
    with pytest.raises(InvalidInput, match="content type"):
        deployment.monitor(unknown, 0.1, 8, 8, fmt)
    with pytest.raises(InvalidInput, match="shadow_prediction only"):
        deployment.monitor(path, 0.1, 8, 8, fmt, shadow_raw_predictions=fmt,
                           shadow_prediction={"detection_classes": [2], "detection_scores": [0.5]})
    assert len(deployment.sent) == 2


def test_only_png_and_jpeg_files_are_images(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.csv").write_text("x,y\n1,2\n")
    assert is_image_file(tmp_path / "a.png") and is_image_file(str(tmp_path / "a.png"))
    assert not is_image_file(tmp_path / "b.csv") and is_image_file(tmp_path / "missing.PNG")
    (tmp_path / "frame").write_bytes(b"\xff\xd8\xff rest")
    assert is_image_file(tmp_path / "frame") and not is_image_file(tmp_path / "missing")
    with pytest.raises(InvalidInput, match="cannot read image"):
        Recorder().predict_image(tmp_path / "missing.png")
    assert not is_image_file({"rows": []}) and not is_image_file(tmp_path)


def test_tags_and_sources_may_be_objects_with_a_name():
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    deployment = Recorder()
    deployment.predict_bytes("f.png", PNG, tags=[Named("cool"), "raw"], source=Named("camera-2"))
    deployment.predict_bytes("f.png", PNG, tags=Named("one"))
    assert deployment.sent[0][1]["tags"] == ["cool", "raw"] and deployment.sent[0][1]["source"] == "camera-2"
    assert deployment.sent[1][1]["tags"] == ["one"]


def test_images_above_the_inline_size_go_as_a_multipart_file_part():
    class Multipart(Recorder):
        def send(self, method: str, path: str, files: dict, timeout: float) -> SimpleNamespace:
            assert timeout == f"waits for {path.removeprefix('/v1/api/')}"  # Session.wait_for(route), as a post
            self.sent.append((path, files))
            return SimpleNamespace(json=lambda: {"id": "y"})

        def wait_for(self, route: str) -> str:
            return f"waits for {route}"

    deployment = Multipart()
    big = PNG + b"\0" * INLINE_IMAGE_BYTES
    fmt = {"detection_classes": [1], "detection_scores": [0.5]}
    assert deployment.predict_bytes("frame.png", big, tags="cam") == {"id": "y"}
    deployment.monitor_bytes(big, "image/png", "f.png", 0.1, 8, 8, fmt)
    deployment.predict_bytes("small.png", big[:INLINE_IMAGE_BYTES])  # up to the threshold: base64 in the JSON body
    (path, files), (monitor_path, monitor_files), (route, small) = deployment.sent
    assert path == "/v1/api/deployments/predict_bytes" and files["image"] == ("frame.png", big,
                                                                             "application/octet-stream")
    assert json.loads(files["metadata"][1]) == {"deployment": "digits-7", "filename": "frame.png", "tags": ["cam"]}
    assert monitor_path == "/v1/api/deployments/monitor_bytes" and monitor_files["image"][2] == "image/png"
    metadata = json.loads(monitor_files["metadata"][1])
    assert "image" not in metadata and metadata["prediction"] == fmt and metadata["content_type"] == "image/png"
    assert route == "deployments/predict_bytes" and base64.b64decode(small["image"]) == big[:INLINE_IMAGE_BYTES]
