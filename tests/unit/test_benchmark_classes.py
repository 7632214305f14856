"""How a classification benchmark reads classes (services/workflow_lineage/benchmark_runs.py), with the engine
replaced by a function answering fixed outputs: the cases where a report used to come back stored and wrong
(accuracy 0 of a model that is right) now either score what the model answered or refuse, naming why."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from services.workflow_lineage.benchmark_runs import classification_candidates
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.errors import InvalidRequest
from shared.messages.lineage import RunClassificationBenchmark

ROUTE = {"name": "clf-1", "workspace_id": 1}


def engine(output: pa.Array, column: str = "out"):
    """An engine answering `output`'s rows for the rows it is sent (in order)."""
    sent = {"rows": 0}

    async def infer(name: str, data: bytes) -> tuple[dict[str, str], bytes]:
        rows = from_ipc(data).num_rows
        answer = pa.table({column: output.slice(sent["rows"], rows)})
        sent["rows"] += rows
        return {}, to_ipc_stream(answer)

    return infer


def command(**fields) -> RunClassificationBenchmark:
    return RunClassificationBenchmark(workspace_id=1, name="r", dataset_id=1, label_column="label",
                                      output_column="out", deployments=["clf-1"], batch_size=2, **fields)


def rows(labels: pa.Array) -> pa.Table:
    return pa.table({"x": pa.array(np.arange(len(labels), dtype=np.float32)), "label": labels})


async def accuracy(table: pa.Table, output: pa.Array, **fields) -> float:
    [candidate] = await classification_candidates(engine(output), [ROUTE], table, command(**fields))
    return candidate.metrics["accuracy"]


async def test_class_ids_with_class_names_are_refused_not_scored_zero():
    # labels 0/1/2 and class_names naming the score positions: every prediction would be a name, no label is one
    scores = tensor_array(np.eye(3, dtype=np.float32)[[0, 1, 2, 1]])
    with pytest.raises(InvalidRequest) as refused:
        await accuracy(rows(pa.array([0, 1, 2, 1])), scores, class_names=["cat", "dog", "bird"])
    message = refused.value.msg
    assert "'label'" in message and "'cat'" in message and "leave class_names out" in message
    # the same scores with the names in the label column, or without class_names: scored right
    assert await accuracy(rows(pa.array(["cat", "dog", "bird", "dog"])), scores,
                          class_names=["cat", "dog", "bird"]) == 1.0
    assert await accuracy(rows(pa.array([0, 1, 2, 1])), scores) == 1.0


async def test_float_labels_and_integer_classes_name_the_same_class():
    # a label column of floats (pandas reads a column with a gap as float64) against a model answering int64
    assert await accuracy(rows(pa.array([0.0, 1.0, 2.0, 1.0])), pa.array([0, 1, 2, 1], pa.int64())) == 1.0
    assert await accuracy(rows(pa.array([0, 1, 2, 1])), pa.array([0.0, 1.0, 2.0, 2.0])) == 0.75


async def test_a_one_value_a_row_output_is_the_class_or_a_probability_not_a_score():
    # an [N, 1] class id (a keras argmax kept 2-D): its "argmax" was always 0
    ids = tensor_array(np.array([[0], [1], [2], [1]], dtype=np.int64))
    assert await accuracy(rows(pa.array([0, 1, 2, 1])), ids) == 1.0
    # a binary classifier's sigmoid: the probability of class 1 (every row was class 0, accuracy the share of 0s)
    probability = tensor_array(np.array([[0.2], [0.9], [0.7], [0.1]], dtype=np.float32))
    assert await accuracy(rows(pa.array([0, 1, 1, 0])), probability) == 1.0
    assert await accuracy(rows(pa.array(["ok", "fraud", "fraud", "ok"])), probability,
                          class_names=["ok", "fraud"]) == 1.0
    with pytest.raises(InvalidRequest, match="class_names has 3 names; a probability a row is a binary"):
        await accuracy(rows(pa.array(["a", "b", "c", "a"])), probability, class_names=["a", "b", "c"])
    # a fraction beside a value no probability can be (a logit): said, not guessed
    logits = tensor_array(np.array([[-1.5], [2.25], [0.5], [-0.25]], dtype=np.float32))
    with pytest.raises(InvalidRequest) as refused:
        await accuracy(rows(pa.array([0, 1, 1, 0])), logits)
    assert "one value a row" in refused.value.msg and "-1.5 beside fractions is neither" in refused.value.msg


async def test_a_probability_output_is_read_the_same_in_every_batch():
    # a sigmoid saturates to exactly 1.0 / 0.0 in float32: a batch holding only such rows (here the second of two,
    # batch_size 2) was read as class ids '1' / '0', no name of class_names, so those rows were scored wrong
    probability = tensor_array(np.array([[0.2], [0.9], [1.0], [0.0]], dtype=np.float32))
    assert await accuracy(rows(pa.array(["ok", "fraud", "fraud", "ok"])), probability,
                          class_names=["ok", "fraud"]) == 1.0
    assert await accuracy(rows(pa.array([0, 1, 1, 0])), probability) == 1.0


async def test_one_class_id_a_row_with_class_names_names_the_class():
    # an [N, 1] class id (a keras argmax kept 2-D) with class_names and the names in the label column: the ids were
    # compared with the names, accuracy 0
    ids = tensor_array(np.array([[0], [1], [2], [1]], dtype=np.int64))
    assert await accuracy(rows(pa.array(["cat", "dog", "bird", "dog"])), ids,
                          class_names=["cat", "dog", "bird"]) == 1.0
    with pytest.raises(InvalidRequest, match="3 is no position of class_names"):
        await accuracy(rows(pa.array(["cat", "dog", "bird", "dog"])),
                       tensor_array(np.array([[0], [1], [3], [1]], dtype=np.int64)), class_names=["cat", "dog", "bird"])


async def test_a_probability_reading_needs_binary_labels():
    probability = tensor_array(np.array([[0.2], [0.9], [0.7], [0.1]], dtype=np.float32))
    # a regression-like output in [0, 1] over a 3-class label column: read as a binary classifier's, it scored
    with pytest.raises(InvalidRequest, match=r"holds '2', not only '0' and '1'"):
        await accuracy(rows(pa.array([0, 1, 2, 0])), probability)
    # labels 'no' / 'yes' without class_names: every prediction was '0' or '1', accuracy 0
    with pytest.raises(InvalidRequest, match=r"holds 'no', 'yes', not only '0' and '1'.*class_names"):
        await accuracy(rows(pa.array(["no", "yes", "yes", "no"])), probability)
    assert await accuracy(rows(pa.array(["no", "yes", "yes", "no"])), probability, class_names=["no", "yes"]) == 1.0


async def test_labels_that_no_prediction_can_name_are_refused():
    scores = tensor_array(np.eye(2, dtype=np.float32)[[0, 1, 1, 0]])
    # scores without class_names are compared by position ('0', '1'): labels 'no' / 'yes' scored accuracy 0
    with pytest.raises(InvalidRequest, match=r"no value of 'label' \('no', 'yes'\) is a score position"):
        await accuracy(rows(pa.array(["no", "yes", "yes", "no"])), scores)
    # a model answering class ids, one a row (a scalar column), with class_names and names as labels: accuracy 0
    with pytest.raises(InvalidRequest, match=r"answers \('0', '1'\), none of class_names"):
        await accuracy(rows(pa.array(["no", "yes", "yes", "no"])), pa.array([0, 1, 1, 0], pa.int64()),
                       class_names=["no", "yes"])
    # a model that is just wrong still gets its report
    assert await accuracy(rows(pa.array([0, 1, 1, 0])), tensor_array(np.eye(2, dtype=np.float32)[[1, 0, 0, 1]])) == 0.0


async def test_a_scalar_probability_column_is_read_as_the_one_value_a_row_one():
    # a sigmoid squeezed to [N] (a scalar column): each fraction was a class of its own ('0.2'), never a label, so
    # the report was the share of rows answered exactly 1.0 or 0.0 (here 0.5)
    probability = pa.array([0.2, 0.9, 1.0, 0.0], pa.float32())
    assert await accuracy(rows(pa.array([0, 1, 1, 0])), probability) == 1.0
    assert await accuracy(rows(pa.array(["ok", "fraud", "fraud", "ok"])), probability,
                          class_names=["ok", "fraud"]) == 1.0
    # a regression's values: no class and no probability, said
    with pytest.raises(InvalidRequest, match="1.75 beside fractions is neither"):
        await accuracy(rows(pa.array([0, 1, 1, 0])), pa.array([0.25, 1.75, 1.0, 0.0]))
    # whole numbers stay the classes answered (a label output), strings too
    assert await accuracy(rows(pa.array([3, 5, 7, 5])), pa.array([3.0, 5.0, 7.0, 7.0])) == 0.75
    assert await accuracy(rows(pa.array(["a", "b", "a", "b"])), pa.array(["a", "b", "b", "b"])) == 0.75
