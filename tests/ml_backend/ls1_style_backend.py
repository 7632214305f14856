# ruff: noqa: UP006, UP008, UP035, UP045 - written in the style of the label-studio-ml originals on purpose
"""A backend written the way label-studio-ml 1.0.x backends are (`__init__(**kwargs)`, `self.train_output`,
`fit(completions, workdir=None, **kwargs)` returning a dict); only its import line names railyard_ml:

    from label_studio_ml.model import LabelStudioMLBase  ->  from railyard_ml.model import LabelStudioMLBase

It predicts the most frequent label among the annotations it was last trained on.
"""

import json
import os
from collections import Counter

from railyard_ml.model import LabelStudioMLBase


class MajorityModel(LabelStudioMLBase):

    def __init__(self, **kwargs):
        super(MajorityModel, self).__init__(**kwargs)
        self.from_name, self.info = list(self.parsed_label_config.items())[0]
        self.to_name = self.info["to_name"][0]
        if self.train_output:
            with open(self.train_output["counts_file"]) as f:
                self.counts = json.load(f)
        else:
            self.counts = {label: 0 for label in self.info["labels"]}

    def predict(self, tasks, **kwargs):
        label = max(self.counts, key=lambda name: (self.counts[name], name))
        total = sum(self.counts.values())
        return [{"result": [{"from_name": self.from_name, "to_name": self.to_name, "type": "choices",
                             "value": {"choices": [label]}}],
                 "score": self.counts[label] / total if total else 0.0} for _ in tasks]

    def fit(self, completions, workdir=None, **kwargs):
        counts = Counter()
        for completion in completions:
            for annotation in completion["annotations"]:
                counts[annotation["result"][0]["value"]["choices"][0]] += 1
        counts_file = os.path.join(workdir, "counts.json")
        with open(counts_file, "w") as f:
            json.dump(dict(counts), f)
        return {"counts_file": counts_file, "annotations": sum(counts.values())}
