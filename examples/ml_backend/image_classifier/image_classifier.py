"""An image classifier on scikit-learn, written as a label-studio-ml 2.x backend (`setup`, `get/set`,
`label_interface`, `ModelResponse`, `fit(event, data, **kwargs)`).

Its labeling config has one <Choices> over one <Image>. Images are read through `get_local_path`, so task data
may hold a local path, a file:// or data: URI, an http(s) URL or a Label Studio upload (/data/upload/...).
Features are a 8x8 thumbnail plus a colour histogram; the classifier is a logistic regression retrained on every
annotated task at each `fit`. Untrained, it answers an empty prediction for each task.
"""

import os
import pickle

import numpy as np
from PIL import Image
from railyard_ml import LabelStudioMLBase, ModelResponse
from sklearn.linear_model import LogisticRegression


def features(path):
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        thumb = np.asarray(rgb.resize((8, 8)), dtype=np.float32).ravel() / 255.0
        histogram = np.concatenate([np.histogram(np.asarray(rgb)[..., c], bins=8, range=(0, 255))[0]
                                    for c in range(3)]).astype(np.float32)
    return np.concatenate([thumb, histogram / max(histogram.sum(), 1.0)])


class ImageClassifier(LabelStudioMLBase):
    _loaded = {}  # model file -> classifier, shared by the instances of this process

    def setup(self):
        self.set("model_version", "image-classifier-0.0.1")

    def config(self):
        from_name, to_name, value = self.label_interface.get_first_tag_occurence("Choices", "Image")
        return from_name, to_name, value, self.label_interface.get_control(from_name).labels

    def classifier(self):
        path = self.get("model_file")
        if not path:
            return None
        if path not in self._loaded:
            with open(path, "rb") as f:
                self._loaded[path] = pickle.load(f)
        return self._loaded[path]

    def predict(self, tasks, context=None, **kwargs):
        from_name, to_name, value, _ = self.config()
        model = self.classifier()
        if model is None:
            return ModelResponse(predictions=[{"result": [], "score": 0.0} for _ in tasks])
        rows = np.stack([features(self.get_local_path(task["data"][value], task_id=task.get("id")))
                         for task in tasks])
        probabilities = model.predict_proba(rows)
        predictions = []
        for row in probabilities:
            best = int(np.argmax(row))
            predictions.append({
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": [str(model.classes_[best])]}}],
                "score": float(row[best]),
            })
        return ModelResponse(predictions=predictions)

    def fit(self, event, data, **kwargs):
        from_name, _, value, _ = self.config()
        # railyard-ml hands fit every annotated task it has seen; label-studio-ml only the webhook's one
        tasks = kwargs.get("annotations") or ([{**data["task"], "annotations": [data["annotation"]]}]
                                              if data.get("annotation") else [])
        rows, labels = [], []
        for task in tasks:
            for annotation in task.get("annotations", []):
                choices = [r["value"]["choices"][0] for r in annotation.get("result", [])
                           if r.get("from_name") == from_name and r.get("value", {}).get("choices")]
                if choices and not annotation.get("was_cancelled"):
                    rows.append(features(self.get_local_path(task["data"][value], task_id=task.get("id"))))
                    labels.append(choices[0])
        if len(set(labels)) < 2:
            return None  # nothing to learn yet: the current model keeps serving
        model = LogisticRegression(max_iter=1000).fit(np.stack(rows), labels)
        model_file = os.path.join(kwargs.get("workdir") or self.model_dir, "image_classifier.pkl")
        with open(model_file, "wb") as f:
            pickle.dump(model, f)
        self.set("model_file", model_file)
        return {"model_file": model_file, "labels": sorted(set(labels)), "trained_on": len(labels)}
