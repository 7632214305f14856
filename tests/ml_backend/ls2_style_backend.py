# ruff: noqa: UP006, UP008, UP035, UP045 - written in the style of the label-studio-ml originals on purpose
"""A backend written the way label-studio-ml 2.x backends are (setup, get/set, label_interface, ModelResponse,
fit(event, data, **kwargs)); only its imports name railyard_ml instead of label_studio_ml:

    from label_studio_ml.model import LabelStudioMLBase     ->  from railyard_ml.model import LabelStudioMLBase
    from label_studio_ml.response import ModelResponse      ->  from railyard_ml.response import ModelResponse

A keyword counter: it predicts the label whose annotated texts share most words with the task's text.
"""

import json
import logging
from typing import Dict, List, Optional

from railyard_ml.model import LabelStudioMLBase
from railyard_ml.response import ModelResponse

logger = logging.getLogger(__name__)


class KeywordModel(LabelStudioMLBase):
    """Custom ML Backend model"""

    def setup(self):
        """Configure any parameters of your model here"""
        self.set("model_version", "keywords-v0.0.1")

    def predict(self, tasks: List[Dict], context: Optional[Dict] = None, **kwargs) -> ModelResponse:
        from_name, to_name, value = self.label_interface.get_first_tag_occurence("Choices", "Text")
        labels = self.label_interface.get_control(from_name).labels
        words = json.loads(self.get("words") or "{}")
        predictions = []
        for task in tasks:
            text = set(task["data"][value].lower().split())
            hits = {label: len(text & set(words.get(label, []))) for label in labels}
            best = max(labels, key=lambda label: hits[label])
            total = sum(hits.values())
            predictions.append({
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": [best]}}],
                "score": hits[best] / total if total else 0.0,
            })
        return ModelResponse(predictions=predictions)

    def fit(self, event, data, **kwargs):
        """Learn the words of each label from the annotation a webhook carries."""
        if event == "START_TRAINING":
            return
        if data.get("annotation", {}).get("result", [{}])[0].get("value", {}).get("choices") == ["Explode"]:
            raise RuntimeError("asked to fail")
        _, _, value = self.label_interface.get_first_tag_occurence("Choices", "Text")
        words = json.loads(self.get("words") or "{}")
        label = data["annotation"]["result"][0]["value"]["choices"][0]
        words.setdefault(label, [])
        words[label] = sorted(set(words[label]) | set(data["task"]["data"][value].lower().split()))
        self.set("words", json.dumps(words))
        logger.info("learned %s", words)
