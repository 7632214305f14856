"""Seed 003's predictions: `predict` / `predict_bytes` (the deployment's model answers an image) and `monitor` /
`monitor_bytes` (a prediction made elsewhere is stored like the deployment's own), the seed's PredictionFormat, and
the image configuration a pipeline's model step keeps (how an image becomes the model's input, how its outputs
become a PredictionFormat)."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field, model_validator

from shared.messages.base import Command, Event, Message
from shared.messages.monitoring import ModelVersionRef
from shared.staging import STAGED_KEY, STAGING_PREFIX, staged_key_for

MAX_DETECTIONS = 1000
MAX_IMAGE_BASE64 = 2 * 1024 * 1024  # characters: the JSON body limit of the gateway bounds it anyway
# where the gateway stages an image uploaded as multipart: in the monitoring bucket, under the uploader's user id and,
# for a task run's token, the one workspace it reaches (the monitoring service consumes it only for that user with
# that same scope): staging/<user id>/<uuid>, or staging/<user id>/ws-<workspace id>/<uuid>. The keys of every staged
# upload (shared/staging.py), under the names the monitoring code has used.
STAGED_IMAGE_PREFIX = STAGING_PREFIX
STAGED_IMAGE_KEY = STAGED_KEY
staged_image_key = staged_key_for  # (user id, the workspace the uploader's token is scoped to or None)

PredictionKind = Literal["classification", "detection", "segmentation"]


class PredictionFormat(Message):
    """The seed's PredictionFormat. Classification: `detection_classes` (class ids: indexes into the model's label
    list) and `detection_scores` (0..1), one per class reported; detection adds `detection_boxes`, each
    `[top, left, bottom, right]` in pixels of the image; segmentation adds `detection_masks`, each a polygon
    `[x1, y1, x2, y2, ...]` in pixels. All lists have the same length."""

    detection_classes: list[int] = Field(max_length=MAX_DETECTIONS)
    detection_scores: list[float] = Field(max_length=MAX_DETECTIONS)
    detection_boxes: list[list[int]] | None = Field(None, max_length=MAX_DETECTIONS)
    detection_masks: list[list[int]] | None = Field(None, max_length=MAX_DETECTIONS)


class ImageOutputs(Message):
    """Which model outputs hold what. Classification: `scores` is one score per label (the classes reported are the
    `top_k` best). Detection: `scores` [K], `boxes` [K, 4], `classes` [K] (left out: every box is class 0).
    Segmentation adds `masks` [K, h, w]: one mask per detection over the whole model input (any resolution),
    foreground above `mask_threshold`."""

    scores: str = Field(min_length=1, max_length=200)
    boxes: str | None = Field(None, min_length=1, max_length=200)
    classes: str | None = Field(None, min_length=1, max_length=200)
    masks: str | None = Field(None, min_length=1, max_length=200)


class ImageConfig(Message):
    """The image configuration of a pipeline's model step (key `image` of its ModelInference or ShadowDeploy body):
    the image is converted to `channels` (1: grayscale, 3: RGB), resized to `size` [width, height] (bilinear; left
    out: kept), each value becomes `(pixel * scale - mean[c]) / std[c]`, laid out as `layout` with a batch dimension
    of one (`flatten`: one vector of the layout's order) and sent as the model's `input`. The outputs named in
    `outputs` become a PredictionFormat of `kind`; class ids index `labels`."""

    input: str = Field(min_length=1, max_length=200, description="The model input that receives the image.")
    kind: PredictionKind
    labels: list[str] = Field(min_length=1, max_length=10_000)
    outputs: ImageOutputs
    size: list[int] | None = Field(None, min_length=2, max_length=2, description="[width, height] to resize to.")
    channels: Literal[1, 3] = 3
    scale: float = Field(1 / 255, description="Each pixel (0-255) is multiplied by this first.")
    mean: list[float] | None = Field(None, description="Subtracted per channel after scaling (1 or `channels`).")
    std: list[float] | None = Field(None, description="Divides per channel after the mean (1 or `channels`).")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    flatten: bool = Field(False, description="Send one flat vector per image (in the layout's order).")
    top_k: int = Field(1, ge=1, le=1000, description="Classification: how many classes to report, best first.")
    box_format: Literal["tlbr", "ltrb"] = Field("tlbr", description="Detection boxes: [top, left, bottom, right] "
                                                "(tlbr, as TensorFlow's detection API) or [left, top, right, bottom].")
    box_normalized: bool = Field(True, description="Detection boxes in 0..1 of the model input's height/width (else "
                                 "in its pixels); either way answered in pixels of the original image.")
    mask_threshold: float = Field(0.5, description="Segmentation: mask values above this are the object.")


STAGED_KEY_DESCRIPTION = ("Instead of image: the key of the image the gateway staged in object storage from a "
                          "multipart upload (set by the gateway; consumed, then deleted, by the monitoring service).")


class _OneImage:
    """The image comes either inline (`image`, base64) or staged (`staged_key`), never both."""

    @model_validator(mode="after")
    def _one_image(self):  # type: ignore[no-untyped-def]
        if self.image is None and self.staged_key is None:
            raise ValueError("image is required: send the image's bytes base64 in 'image', or upload it as the "
                             "'image' part of a multipart/form-data body (docs/monitoring.md)")
        if self.image is not None and self.staged_key is not None:
            raise ValueError("the image came twice: send it base64 in 'image' or as a multipart 'image' part, "
                             "not both")
        return self


class PredictImage(_OneImage, Command):
    """predict / predict_bytes: run the deployment's model on a PNG or JPEG image (base64) and keep the prediction."""

    deployment: str = Field(min_length=1, max_length=200)
    image: str | None = Field(None, min_length=1, max_length=MAX_IMAGE_BASE64, description="The image's bytes, "
                              "base64 (or staged_key).")
    staged_key: str | None = Field(None, min_length=1, max_length=300, description=STAGED_KEY_DESCRIPTION)
    filename: str | None = Field(None, max_length=255)
    content_type: str | None = Field(None, max_length=100, description="image/png or image/jpeg; left out: from "
                                     "the bytes.")
    tags: list[str] = Field(default_factory=list, max_length=100)
    source: str | None = Field(None, min_length=1, max_length=200)


class MonitorImage(_OneImage, Command):
    """monitor / monitor_bytes: a prediction made elsewhere on this image, stored like the deployment's own (its
    model versions are the deployment's current ones, as the seed says; for an A/B split, the arm `model_version`
    names, or none)."""

    deployment: str = Field(min_length=1, max_length=200)
    image: str | None = Field(None, min_length=1, max_length=MAX_IMAGE_BASE64, description="The image's bytes, "
                              "base64 (or staged_key).")
    staged_key: str | None = Field(None, min_length=1, max_length=300, description=STAGED_KEY_DESCRIPTION)
    filename: str | None = Field(None, max_length=255)
    content_type: str | None = Field(None, max_length=100)
    latency: float = Field(ge=0, le=86_400, description="Seconds the model took.")
    height: int = Field(ge=1, le=100_000)
    width: int = Field(ge=1, le=100_000)
    prediction: PredictionFormat
    source: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=100)
    timestamp: float | None = Field(None, description="When it was predicted (seconds since the epoch); left out: "
                                    "reception.")
    shadow_latency: float | None = Field(None, ge=0, le=86_400)
    shadow_prediction: PredictionFormat | None = None
    model_version: ModelVersionRef | None = Field(None, description="For a deployment whose models sit in an A/B "
                                                  "split: the arm that made the prediction (a name alone when one "
                                                  "arm has it; left out: none is recorded). Not used for a "
                                                  "deployment with one model, as the seed says (its current one is "
                                                  "recorded).")


class PredictionResult(Message):
    """A stored prediction: its id (reviews refer to it), what answered and how, and the image it is about."""

    id: uuid.UUID
    deployment: str
    origin: Literal["predict", "monitor"]
    kind: PredictionKind
    prediction: PredictionFormat
    labels: list[str] | None = Field(description="The label of each class in `prediction.detection_classes` (when "
                                     "the deployment's image configuration names them).")
    shadow_prediction: PredictionFormat | None
    model_version: ModelVersionRef | None
    shadow_model_version: ModelVersionRef | None
    pipeline_version: str | None
    latency: float | None
    shadow_latency: float | None
    height: int
    width: int
    content_type: str
    image_sha256: str
    filename: str | None
    tags: list[str]
    source: str | None
    predicted_at: str
    datalake_file: str | None = Field(None, description="The prediction's file in the deployment's target datalake "
                                      "(an images dataset), when it has one and the file was written.")


class PredictionCreated(Event):
    """A prediction was stored (predict or monitor)."""

    prediction_id: uuid.UUID
    deployment_id: int
    workspace_id: int
    origin: Literal["predict", "monitor"]
