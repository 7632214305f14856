"""The seed's text classifier: TF-IDF + logistic regression on scikit-learn, written as a label-studio-ml 1.0.x
backend (`__init__(**kwargs)`, `train_output`, `fit(annotations, workdir=None, **kwargs)`).

Its labeling config has one <Choices> over one <Text>. Cold, it knows only the label names; every `fit` retrains
on all annotated tasks and returns where the model went, which the next instance reads as `self.train_output`.
"""

import os
import pickle
import uuid

import numpy as np
from railyard_ml import LabelStudioMLBase
from railyard_ml.errors import InvalidRequest
from railyard_ml.utils import DATA_UNDEFINED_NAME
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


class TextClassifier(LabelStudioMLBase):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # one <Choices> output over one <Text> input
        assert len(self.parsed_label_config) == 1, "the config must have exactly one <Choices>"
        self.from_name, self.info = list(self.parsed_label_config.items())[0]
        assert self.info["type"] == "Choices"
        assert len(self.info["to_name"]) == 1 and len(self.info["inputs"]) == 1
        assert self.info["inputs"][0]["type"] == "Text"
        self.to_name = self.info["to_name"][0]
        self.value = self.info["inputs"][0]["value"]
        if not self.train_output:
            # nothing trained yet: a cold-started classifier that knows the label names only
            self.labels = self.info["labels"]
            self.reset_model()
            self.model.fit(X=self.labels, y=list(range(len(self.labels))))
        else:
            with open(self.train_output["model_file"], mode="rb") as f:
                self.model = pickle.load(f)
            self.labels = self.train_output["labels"]

    def reset_model(self):
        self.model = make_pipeline(TfidfVectorizer(ngram_range=(1, 3), token_pattern=r"(?u)\b\w\w+\b|\w"),
                                   LogisticRegression(C=10))

    def text_of(self, task, index):
        """The task's text (its data's `self.value` key, the labeling config's <Text value="$...">): a task without
        one is the request's fault, a 400 `invalid_request` saying which field is missing (it was a 500 model_error
        from deep in scikit-learn: "AttributeError: 'NoneType' object has no attribute 'lower'")."""
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise InvalidRequest(f"task {index} (id {task.get('id') if isinstance(task, dict) else None}) has no "
                                 f"'data' object: send the text to classify as data.{self.value}")
        text = data.get(self.value, data.get(DATA_UNDEFINED_NAME))
        if not isinstance(text, str):
            had = f"data.{self.value} is {type(text).__name__}" if self.value in data else (
                f"its data has {', '.join(map(repr, data)) or 'no keys'}")
            raise InvalidRequest(f"task {index} (id {task.get('id')}) has no text to classify: it needs "
                                 f"data.{self.value} as a string (the labeling config's "
                                 f"<Text value=\"${self.value}\">); {had}")
        return text

    def predict(self, tasks, **kwargs):
        texts = [self.text_of(task, index) for index, task in enumerate(tasks)]
        probabilities = self.model.predict_proba(texts)
        best = np.argmax(probabilities, axis=1)
        scores = probabilities[np.arange(len(best)), best]
        predictions = []
        for index, score in zip(best, scores, strict=True):
            predictions.append({
                "result": [{"from_name": self.from_name, "to_name": self.to_name, "type": "choices",
                            "value": {"choices": [self.labels[index]]}}],
                "score": float(score),
            })
        return predictions

    def fit(self, annotations, workdir=None, **kwargs):
        texts, labels = [], []
        for index, task in enumerate(annotations):
            for annotation in task.get("annotations", []):
                if annotation.get("skipped") or annotation.get("was_cancelled") or not annotation.get("result"):
                    continue
                texts.append(self.text_of(task, index))
                labels.append(annotation["result"][0]["value"]["choices"][0])
        if len(set(labels)) < 2:
            return None  # a classifier needs two labels: nothing learned yet, the current model keeps serving
        self.labels = sorted(set(labels) | set(self.info["labels"]))
        index = {label: i for i, label in enumerate(self.labels)}
        self.reset_model()
        self.model.fit(texts, [index[label] for label in labels])
        # a label never annotated yet keeps a column so probabilities line up with self.labels
        self.labels = [self.labels[i] for i in self.model.classes_]

        workdir = workdir or os.getenv("MODEL_DIR") or "."
        model_file = os.path.join(workdir, f"{uuid.uuid4().hex[:8]}.pkl")
        with open(model_file, mode="wb") as f:
            pickle.dump(self.model, f)
        return {"labels": self.labels, "model_file": model_file, "trained_on": len(texts)}
