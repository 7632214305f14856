"""The shipped text classifier (examples/ml_backend/text_classifier) deployed on Railyard, as the engine runs it: its
`railyard-ml deploy railyard` package loaded by the engine's ByopRuntime (what the sandboxed worker runs). A task
without `data.text` is the request's fault there too: the engine answers 400 `invalid_request` with the example's
own words after its "the model failed: it raised InvalidRequest: " (users_code_failed), as the README says. It was
scikit-learn's "'NoneType' object has no attribute 'lower'" (also a 400: the engine answers every exception of a
user's model so, with its words)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from shared.errors import InvalidRequest
from tests.unit.text_classifier_deployed import deployed  # noqa: F401 (the fixture)


def test_a_task_without_text_is_a_400_in_the_examples_words(deployed):  # noqa: F811 - the fixture
    good = deployed.predict(pa.table({"task": [json.dumps({"data": {"text": "great"}})]}))
    assert good.num_rows == 1 and json.loads(good.column("prediction")[0].as_py())["result"]
    for task, said in (({"data": {"body": "great"}}, "its data has 'body'"),
                       ({"id": 4, "data": {"text": 5}}, "data.text is int")):
        with pytest.raises(InvalidRequest) as refused:
            deployed.predict(pa.table({"task": [json.dumps(task)]}))
        assert refused.value.status == 400 and refused.value.code == "invalid_request"
        assert str(refused.value).startswith("the model failed: it raised InvalidRequest: task 0 (id "), refused.value
        assert "has no text to classify: it needs data.text as a string" in str(refused.value), refused.value
        assert said in str(refused.value), refused.value
