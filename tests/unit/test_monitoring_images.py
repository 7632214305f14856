"""shared/images.py: decoding (PNG/JPEG only, strict), image statistics, preprocessing by a pipeline's
image configuration, model outputs as the seed's PredictionFormat (min_threshold on classes and boxes,
[top, left, bottom, right] in the original image's pixels) and the checks of PredictionFormats that monitor receives."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared import images
from shared.errors import InvalidRequest
from shared.messages.monitoring_predictions import ImageConfig, PredictionFormat
from tests.image_models import (
    detector_image_config,
    detector_onnx,
    digit_pixels,
    digit_png,
    digits_classifier,
    digits_image_config,
    segmenter_image_config,
    segmenter_onnx,
    squares_png,
)


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def test_decode_accepts_png_and_jpeg_and_says_why_it_refuses():
    data = png(Image.new("RGB", (5, 4), (10, 20, 30)))
    img = images.decode_image(data, "image/png; charset=binary")
    assert img.size == (5, 4) and images.content_type_of(img) == "image/png"
    assert images.content_type_of(images.decode_image(png(Image.new("L", (3, 3)), "JPEG"), "image/jpg")) == \
        "image/jpeg"
    refused = {
        "empty": (b"", None), "signature": (b"GIF89a....", None), "truncated": (data[:40], None),
        "declared other": (data, "image/jpeg"), "unsupported type": (data, "image/gif"),
    }
    messages = {}
    for case, (raw, content_type) in refused.items():
        with pytest.raises(InvalidRequest) as caught:
            images.decode_image(raw, content_type)
        messages[case] = caught.value.msg
    assert "empty" in messages["empty"] and "neither a PNG nor a JPEG" in messages["signature"]
    assert "does not decode" in messages["truncated"] and "bytes are a PNG" in messages["declared other"]
    assert "unsupported content type 'image/gif'" in messages["unsupported type"]


def test_decode_refuses_a_huge_canvas_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(InvalidRequest, match="11x10 pixels"):
        images.decode_image(png(Image.new("L", (11, 10))))


def test_image_features_are_the_fixed_named_statistics():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (255, 0, 0)
    features = images.image_features(Image.fromarray(rgb, "RGB"))
    assert tuple(features) == images.FEATURE_NAMES
    assert features["height"] == 4 and features["width"] == 6
    assert features["red_mean"] == 127.5 and features["red_std"] == 127.5 and features["green_mean"] == 0
    assert features["brightness_mean"] == pytest.approx(np.mean([76, 0]), abs=0.5)


def test_preprocess_follows_size_channels_scale_normalization_and_layout():
    img = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L").convert("RGB")
    base = {"input": "x", "kind": "classification", "labels": ["a"], "outputs": {"scores": "s"}}
    nchw = images.preprocess(img, ImageConfig(**base, scale=1.0))
    assert nchw.shape == (1, 3, 3, 4) and nchw.dtype == np.float32 and nchw[0, 1, 2, 3] == 220
    nhwc = images.preprocess(img, ImageConfig(**base, layout="NHWC", mean=[10, 20, 30], std=[2], scale=1.0))
    assert nhwc.shape == (1, 3, 4, 3) and nhwc[0, 0, 1].tolist() == [5.0, 0.0, -5.0]
    flat = images.preprocess(img, ImageConfig(**base, channels=1, size=[2, 2], flatten=True))
    assert flat.shape == (1, 4) and 0 <= flat.min() and flat.max() <= 1
    with pytest.raises(InvalidRequest, match="mean has 2 values"):
        images.preprocess(img, ImageConfig(**base, mean=[1, 2]))


def test_digits_preprocessing_gives_the_classifier_back_its_training_values():
    config = ImageConfig(**digits_image_config())
    model = digits_classifier()
    for index in range(5):
        data, label = digit_png(index, size=8)
        values = images.preprocess(images.decode_image(data), config)
        pixels, _ = digit_pixels(index)
        assert np.abs(values.reshape(8, 8) - pixels).max() < 0.04  # 0-16 levels survived PNG's 0-255
        scores = model.predict_proba(values)[0]
        prediction = images.to_prediction({"probabilities": scores, "label": np.int64(0)}, config, 8, 8, None)
        assert prediction == {"detection_classes": [int(np.argmax(scores))],
                              "detection_scores": [pytest.approx(float(scores.max()))]}


def test_min_threshold_drops_classes_scoring_below_it_and_may_leave_no_class():
    config = ImageConfig(**digits_image_config() | {"top_k": 3})
    scores = {"probabilities": np.array([0.05, 0.6, 0.0, 0.25, 0.1, 0, 0, 0, 0, 0])}
    assert images.to_prediction(scores, config, 8, 8, None) == {
        "detection_classes": [1, 3, 4], "detection_scores": [0.6, 0.25, 0.1]}
    assert images.to_prediction(scores, config, 8, 8, 0.25) == {  # a score equal to the threshold stays
        "detection_classes": [1, 3], "detection_scores": [0.6, 0.25]}
    assert images.to_prediction(scores, config, 8, 8, 0.7) == {"detection_classes": [], "detection_scores": []}
    assert images.to_prediction(scores, config, 8, 8, 0.0)["detection_classes"] == [1, 3, 4]  # 0: no filter


def test_detector_outputs_become_boxes_in_the_original_pixels_best_first_above_the_threshold():
    config = ImageConfig(**detector_image_config())
    session = ort.InferenceSession(detector_onnx())
    data = squares_png({(1, 2): 255, (3, 0): 128, (0, 0): 40}, size=64)
    values = images.preprocess(images.decode_image(data), config)
    boxes, scores, classes = session.run(None, {"image": values})
    prediction = images.to_prediction({"boxes": boxes[0], "scores": scores[0], "classes": classes[0]}, config,
                                      64, 64, 0.3)
    assert prediction["detection_classes"] == [1, 0]
    assert prediction["detection_boxes"] == [[16, 32, 32, 48], [48, 0, 64, 16]]
    assert prediction["detection_scores"][0] > 0.85 and 0.4 < prediction["detection_scores"][1] < 0.6
    everything = images.to_prediction({"boxes": boxes[0], "scores": scores[0], "classes": classes[0]}, config,
                                      64, 64, None)
    assert len(everything["detection_classes"]) == 16
    # [left, top, right, bottom] in pixels of a 32x32 input, on a 64x48 original
    ltrb = ImageConfig(**detector_image_config() | {"box_format": "ltrb", "box_normalized": False})
    converted = images.to_prediction({"boxes": np.array([[4.0, 8.0, 12.0, 16.0]]), "scores": np.array([0.9]),
                                      "classes": np.array([1])}, ltrb, 48, 64, None)
    assert converted["detection_boxes"] == [[12, 8, 24, 24]]


def test_outputs_that_do_not_fit_the_configuration_are_refused():
    config = ImageConfig(**digits_image_config())
    with pytest.raises(InvalidRequest, match="no output 'probabilities'"):
        images.to_prediction({"label": np.int64(1)}, config, 8, 8, None)
    with pytest.raises(InvalidRequest, match="3 scores for 10 labels"):
        images.to_prediction({"probabilities": np.ones(3)}, config, 8, 8, None)


def fmt(**fields) -> PredictionFormat:
    return PredictionFormat(**{"detection_classes": [1], "detection_scores": [0.5]} | fields)


@pytest.mark.parametrize(("prediction", "message"), [
    (fmt(detection_scores=[0.5, 0.2]), "2 values but detection_classes 1"),
    (fmt(detection_scores=[1.5]), "between 0 and 1"),
    (fmt(detection_scores=[float("nan")]), "between 0 and 1"),
    (fmt(detection_classes=[-1]), "0 or more"),
    (fmt(detection_classes=[3]), "below 3"),
    (fmt(detection_boxes=[[0, 0, 5]]), "has 3 values"),
    (fmt(detection_boxes=[[5, 0, 2, 4]]), "top <= bottom"),
    (fmt(detection_boxes=[[0, 0, 11, 4]]), "inside the 20x10 image"),
    (fmt(detection_boxes=[]), "0 boxes"),
    (fmt(detection_masks=[[0, 0, 1, 1, 2, 2]]), "without detection_boxes"),
    (fmt(detection_boxes=[[0, 0, 5, 5]], detection_masks=[[0, 0, 1, 1]]), "at least 3 points"),
    (fmt(detection_boxes=[[0, 0, 5, 5]], detection_masks=[[0, 0, 1, 1, 21, 2]]), "outside"),
])
def test_monitored_predictions_are_checked_strictly(prediction, message):
    with pytest.raises(InvalidRequest, match=message):
        images.check_prediction(prediction, height=10, width=20, labels=["a", "b", "c"])


def test_valid_predictions_have_a_kind():
    assert images.check_prediction(fmt(), 10, 20) == "classification"
    assert images.check_prediction(fmt(detection_boxes=[[0, 0, 10, 20]]), 10, 20) == "detection"
    assert images.check_prediction(fmt(detection_boxes=[[0, 0, 5, 5]], detection_masks=[[0, 0, 5, 0, 5, 5]]),
                                   10, 20) == "segmentation"
    assert images.check_prediction(PredictionFormat(detection_classes=[], detection_scores=[]), 1, 1) == \
        "classification"


def test_segmentation_masks_become_polygons_in_the_original_pixels():
    config = ImageConfig(**segmenter_image_config())
    session = ort.InferenceSession(segmenter_onnx())
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[0:16, 16:32] = 255  # cell (0, 1): a white square
    pixels[32:48, 32:48] = 200  # cell (2, 2): an L of 200 (mean 0.59 of the cell: grey)
    pixels[32:40, 40:48] = 0
    values = images.preprocess(images.decode_image(squares_png({}, pixels=pixels)), config)
    boxes, scores, classes, masks = session.run(None, {"image": values})
    prediction = images.to_prediction({"boxes": boxes[0], "scores": scores[0], "classes": classes[0],
                                       "masks": masks[0]}, config, 64, 64, 0.3)
    assert prediction["detection_classes"] == [1, 0]
    assert prediction["detection_boxes"] == [[0, 16, 16, 32], [32, 32, 48, 48]]
    assert prediction["detection_masks"] == [[16, 0, 32, 0, 32, 16, 16, 16],
                                             [32, 32, 40, 32, 40, 40, 48, 40, 48, 48, 32, 48]]
    assert images.check_prediction(PredictionFormat(**prediction), 64, 64) == "segmentation"


def test_mask_polygons_outline_every_region_largest_first_and_an_empty_mask_is_its_box():
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    assert images.mask_polygon(ring, 6, 6) == [0, 0, 6, 0, 6, 6, 0, 6]  # the outline (no holes)
    two = np.zeros((4, 4), dtype=bool)
    two[0, 0], two[2:4, 2:4] = True, True
    assert images.mask_polygon(two, 4, 4) == [2, 2, 4, 2, 4, 4, 2, 4]
    assert images.mask_polygons(two, 4, 4) == [[2, 2, 4, 2, 4, 4, 2, 4], [0, 0, 1, 0, 1, 1, 0, 1]]
    assert images.mask_polygon(np.zeros((3, 3), dtype=bool), 3, 3) == []
    config = ImageConfig(**segmenter_image_config())
    empty = images.to_prediction({"boxes": np.array([[0.0, 0.0, 0.5, 0.5]]), "scores": np.array([0.9]),
                                  "classes": np.array([1]), "masks": np.zeros((1, 4, 4))}, config, 10, 20, None)
    assert empty["detection_masks"] == [[0, 0, 10, 0, 10, 5, 0, 5]]


def test_a_segmentation_keeps_every_region_of_a_mask_with_its_detections_class_and_score():
    config = ImageConfig(**segmenter_image_config())
    masks = np.zeros((2, 4, 4))
    masks[0, 0, 0], masks[0, 2:4, 2:4] = 1.0, 1.0  # detection 0: two regions
    masks[1, 0:2, 2:4] = 1.0  # detection 1: one region, smaller than its box
    prediction = images.to_prediction({"boxes": np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 1.0, 1.0]]),
                                       "scores": np.array([0.9, 0.6]), "classes": np.array([1, 0]),
                                       "masks": masks}, config, 8, 8, None)
    assert prediction["detection_classes"] == [1, 1, 0] and prediction["detection_scores"] == [0.9, 0.9, 0.6]
    assert prediction["detection_masks"] == [[4, 4, 8, 4, 8, 8, 4, 8], [0, 0, 2, 0, 2, 2, 0, 2],
                                             [4, 0, 8, 0, 8, 4, 4, 4]]
    # several regions: each its own bounding box; one region: the detection's box
    assert prediction["detection_boxes"] == [[4, 4, 8, 8], [0, 0, 2, 2], [0, 4, 8, 8]]
    assert images.check_prediction(PredictionFormat(**prediction), 8, 8) == "segmentation"
    speckled = np.zeros((1, 64, 64))
    speckled[0, ::2, ::2] = 1.0  # 1024 regions: at most MAX_DETECTIONS entries
    many = images.to_prediction({"boxes": np.array([[0.0, 0.0, 1.0, 1.0]]), "scores": np.array([0.5]),
                                 "classes": np.array([0]), "masks": speckled}, config, 64, 64, None)
    assert len(many["detection_masks"]) == 1000 == len(many["detection_boxes"])


def test_a_detector_answering_more_boxes_than_a_prediction_holds_keeps_the_best_scoring():
    config = ImageConfig(**detector_image_config())
    count = 1001
    scores = np.linspace(0.0, 1.0, count)[::-1].copy()
    scores[0], scores[-1] = 0.0, 1.0  # the best comes last, the worst first: kept by score, not position
    boxes = np.tile([0.0, 0.0, 0.5, 0.5], (count, 1))
    prediction = images.to_prediction({"boxes": boxes, "scores": scores, "classes": np.zeros(count)}, config,
                                      8, 8, None)
    assert len(prediction["detection_scores"]) == 1000 == len(prediction["detection_boxes"])
    assert prediction["detection_scores"][0] == 1.0 and 0.0 not in prediction["detection_scores"]
    PredictionFormat(**prediction)  # it fits
