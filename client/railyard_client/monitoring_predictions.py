"""Seed 003's predictions on a `Deployment`: `predict` on an image file (the `Deployment.predict` of a PNG or JPEG
path), `predict_bytes`, `monitor` and `monitor_bytes` (routes `/v1/api/deployments/<method>`, answered by the
monitoring service). An image up to INLINE_IMAGE_BYTES rides base64 in the JSON body; a larger one (a camera frame,
up to the server's `monitoring.max_image_bytes`, 25 MiB by default) is sent as multipart/form-data: the image as the
`image` file part, the same JSON fields as the `metadata` part."""

from __future__ import annotations

import base64
import json
import mimetypes
from enum import Enum
from pathlib import Path
from typing import Any

from railyard_client.errors import InvalidInput
from railyard_client.monitoring import _model_version_ref
from railyard_client.session import Session, refuse_non_finite

SUPPORTED_CONTENT_TYPES = ("image/png", "image/jpeg")
# above this, the image goes as a multipart file part (staged in object storage by the server) rather than base64
# in the JSON body, which the server's JSON body limit (2 MiB: images of about 1.5 MB) bounds
INLINE_IMAGE_BYTES = 512 * 1024


class SupportedContentType(str, Enum):
    """The seed's content types of monitored images."""

    PNG = "image/png"
    JPEG = "image/jpeg"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_image_file(value: Any) -> bool:
    """Whether `value` is the path of an image: named .png/.jpg/.jpeg (existing or not: predict then says it is
    missing), or an existing PNG or JPEG file by its first bytes."""
    if not isinstance(value, str | Path):
        return False
    path = Path(value)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            head = handle.read(8)
    except (OSError, ValueError):
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from None


def _name(value: Any) -> str:
    """A tag or source given as a string or as an object with a `name` (the seed's Tag and DataSource)."""
    return value if isinstance(value, str) else str(getattr(value, "name", value))


def _tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    return [_name(tag) for tag in (tags if isinstance(tags, list | tuple) else [tags])]


def _content_type(value: SupportedContentType | str | None) -> str | None:
    if value is None:
        return None
    return value.value if isinstance(value, SupportedContentType) else str(value)


def _format(prediction: Any, what: str) -> dict[str, Any] | None:
    """A PredictionFormat as a dict (a dict, or an object with model_dump()/dict())."""
    if prediction is None:
        return None
    if isinstance(prediction, dict):
        return prediction
    for method in ("model_dump", "dict"):
        if hasattr(prediction, method):
            return {k: v for k, v in getattr(prediction, method)().items() if v is not None}
    raise InvalidInput(f"{what} must be a dict with detection_classes and detection_scores (and detection_boxes, "
                       "detection_masks for detection and segmentation)")


class DeploymentPredictions:
    """The seed's prediction methods, mixed into `Deployment` (which provides `_session` and `name`)."""

    _session: Session
    name: str

    def _send_image(self, route: str, body: dict[str, Any], raw_image: bytes, filename: str | None,
                    content_type: str | None) -> dict[str, Any]:
        """POST the image with `body`: base64 in the JSON body when small, else as a multipart file part."""
        if len(raw_image) <= INLINE_IMAGE_BYTES:
            return self._session.post(route, {**body, "image": base64.b64encode(raw_image).decode()})
        refuse_non_finite(body)  # json.dumps writes NaN, which the gateway refuses as "not valid JSON"
        files = {"image": (filename or "image", bytes(raw_image), content_type or "application/octet-stream"),
                 "metadata": (None, json.dumps(body), "application/json")}
        return self._session.send("POST", f"/v1/api/{route}", files=files, timeout=self._session.wait_for(route)).json()

    def predict_image(self, file_path: str | Path, tags: str | list[str] | None = None,
                      source: str | None = None) -> dict[str, Any]:
        """Run this deployment's model on a PNG or JPEG file and keep the prediction; `Deployment.predict` does this
        for an image path. Returns the prediction: `id` (reviews refer to it), `kind`, `prediction` (the seed's
        PredictionFormat: detection_classes, detection_scores, and detection_boxes [top, left, bottom, right] in
        pixels for detection), `labels`, `shadow_prediction`, model versions, latencies, image size and sha256."""
        path = Path(file_path)
        return self.predict_bytes(path.name, _read(path), tags=tags, source=source)

    def predict_bytes(self, filename: str, raw_image: bytes, tags: str | list[str] | None = None,
                      source: str | None = None) -> dict[str, Any]:
        """As `predict` on an image's bytes (PNG or JPEG) held in memory; `filename` is kept for display. An image
        above 512 KiB is sent as a multipart upload (up to the server's `monitoring.max_image_bytes`, 25 MiB by
        default; PayloadTooLarge above)."""
        if not isinstance(raw_image, bytes | bytearray) or not raw_image:
            raise InvalidInput("raw_image must be the non-empty bytes of a PNG or JPEG image")
        body: dict[str, Any] = {"deployment": self.name, "filename": filename, "tags": _tags(tags)}
        if source is not None:
            body["source"] = _name(source)
        return self._send_image("deployments/predict_bytes", body, raw_image, filename, None)

    def monitor(self, image_path: str | Path, latency: float, height: int, width: int, prediction: Any,
                source: str | None = None, tags: list[str] | None = None, timestamp: float | None = None,
                model_version: Any = None, shadow_model_version: Any = None, shadow_latency: float | None = None,
                shadow_raw_predictions: Any = None, shadow_prediction: Any = None,
                content_type: SupportedContentType | str | None = None) -> dict[str, Any]:
        """Send a prediction made elsewhere on this image file, kept like the deployment's own. `prediction` (and
        `shadow_prediction`) is a PredictionFormat dict: detection_classes (class ids, integers: an index into the
        model step's image `labels`), detection_scores, and for detection detection_boxes [top, left, bottom, right],
        for segmentation detection_masks polygons [x1, y1, x2, y2, ...].
        The deployment's current model versions are recorded, as the seed says; for a deployment whose models sit
        in an A/B split, `model_version` (a ModelVersion, Model or name) names the arm that made the prediction
        (left out: none is recorded), and one the split does not hold is refused (InvalidRequest, 400); it is not
        used for a deployment with one model.
        `shadow_model_version` is not used; `shadow_raw_predictions` is the old name of `shadow_prediction`.
        `content_type` is guessed from the file name when left out."""
        if shadow_raw_predictions is not None and shadow_prediction is not None and \
                _format(shadow_raw_predictions, "shadow_raw_predictions") != _format(shadow_prediction,
                                                                                     "shadow_prediction"):
            raise InvalidInput("give shadow_prediction only (shadow_raw_predictions is its old name)")
        path = Path(image_path)
        chosen = _content_type(content_type) or mimetypes.guess_type(path.name)[0]
        if chosen not in SUPPORTED_CONTENT_TYPES:
            raise InvalidInput(f"cannot tell the content type of {path.name!r} ({chosen}): pass content_type "
                               "'image/png' or 'image/jpeg'")
        return self.monitor_bytes(_read(path), chosen, path.name, latency, height, width, prediction, source=source,
                                  tags=tags, timestamp=timestamp, shadow_latency=shadow_latency,
                                  shadow_prediction=shadow_prediction if shadow_prediction is not None
                                  else shadow_raw_predictions, model_version=model_version)

    def monitor_bytes(self, raw_image: bytes, content_type: SupportedContentType | str, filename: str,
                      latency: float, height: int, width: int, prediction: Any, source: str | None = None,
                      tags: list[str] | None = None, timestamp: float | None = None,
                      shadow_latency: float | None = None, shadow_prediction: Any = None,
                      model_version: Any = None) -> dict[str, Any]:
        """As `monitor` on an image's bytes; `content_type` is 'image/png' or 'image/jpeg'. Returns the stored
        prediction (its `id`, model versions, image sha256...)."""

        if not isinstance(raw_image, bytes | bytearray) or not raw_image:
            raise InvalidInput("raw_image must be the non-empty bytes of a PNG or JPEG image")
        body: dict[str, Any] = {
            "deployment": self.name, "filename": filename, "content_type": _content_type(content_type),
            "latency": latency, "height": height, "width": width, "prediction": _format(prediction, "prediction"),
            "tags": _tags(tags)}
        optional = {"source": _name(source) if source is not None else None, "timestamp": timestamp,
                    "shadow_latency": shadow_latency,
                    "shadow_prediction": _format(shadow_prediction, "shadow_prediction"),
                    "model_version": _model_version_ref(model_version) if model_version is not None else None}
        body |= {key: value for key, value in optional.items() if value is not None}
        return self._send_image("deployments/monitor_bytes", body, raw_image, filename, body["content_type"])
