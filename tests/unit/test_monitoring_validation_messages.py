"""Monitoring's messages for an invalid image configuration, model answer or ground truth name the field at fault
as `field.path: what is wrong`; an error about the whole object read "(: Input should be a valid dictionary ...)"
(an empty location before the colon), it now names what it is about ("image", "answer", "ground_truth")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.monitoring import feedback, predictions
from shared.errors import Conflict, InvalidRequest
from tests.image_models import digits_image_config


def _pipeline(image) -> dict:
    return {"steps": [{"ModelInference": {"models": ["digits"], "image": image}}]}


def test_an_image_configuration_that_is_not_an_object_names_the_image_not_an_empty_location():
    with pytest.raises(Conflict) as caught:
        predictions.image_config(_pipeline("grayscale please"))
    message = str(caught.value)
    assert "(image: Input should be a valid dictionary" in message, message
    assert "(:" not in message and "( :" not in message
    assert "fix the 'image' of its model step" in message


def test_an_image_configurations_field_error_still_names_the_field():
    config = digits_image_config()
    del config["outputs"]["scores"]
    with pytest.raises(Conflict, match=r"\(outputs\.scores: Field required\): fix the 'image'"):
        predictions.image_config(_pipeline(config))
    assert predictions.image_config(_pipeline(digits_image_config())) is not None


def test_a_model_answer_that_is_not_an_object_names_the_answer():
    row = SimpleNamespace(prediction=[0.1, 0.9], shadow_prediction=None)
    with pytest.raises(predictions.ModelAnswerInvalid) as caught:
        predictions._formatted(row)
    message = str(caught.value)
    assert "not a PredictionFormat (answer: Input should be a valid dictionary" in message, message
    row = SimpleNamespace(prediction={"detection_classes": [1]}, shadow_prediction=None)
    with pytest.raises(predictions.ModelAnswerInvalid, match=r"\(detection_scores: Field required\); nothing"):
        predictions._formatted(row)


def test_a_ground_truth_that_is_not_an_object_reads_without_a_trailing_dot():
    with pytest.raises(InvalidRequest) as caught:
        feedback._check_format("cat", {"height": 8, "width": 8}, None)
    assert str(caught.value).startswith("ground_truth: Input should be a valid dictionary"), str(caught.value)
    with pytest.raises(InvalidRequest, match=r"^ground_truth\.detection_scores: Field required"):
        feedback._check_format({"detection_classes": [1]}, {"height": 8, "width": 8}, None)
