"""Per-pipeline log policies (engine_config.log_policy: all, sampled, outputs, off) through the whole stack, and
adaptive batching seen from outside: concurrent requests each get their own answer and every row is logged."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import tensor_array, to_ipc_file
from tests.integration.conftest import Account, post
from tests.integration.test_logs import all_rows, marked, wait_rows
from tests.integration.test_pipelines import _upload_bytes, infer, onnx_outputs
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration
ARROW = "application/vnd.apache.arrow.file"
POLICIES = {"pol-all": None, "pol-sampled": {"mode": "sampled", "fraction": 0.5}, "pol-outputs": "outputs",
            "pol-off": {"mode": "off"}}


def _deploy(stack, account: Account, name: str, policy) -> tuple[str, int, int]:
    pipeline = post(stack, "pipelines/create", account.token, {
        "pipeline_id": name, "workspace_id": account.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": "ccfraud"}]}}]}}).json()
    config = {} if policy is None else {"log_policy": policy}
    deployed = post(stack, "pipelines/deploy", account.token, {
        "deploy_id": name, "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
        "pipeline_id": pipeline["pipeline_pk_id"], "engine_config": config})
    assert deployed.status_code == 200, deployed.text
    return post(stack, "admin/get_pipeline_external_url", account.token,
                {"workspace_id": account.workspace_id, "pipeline_name": name}).json()["url"], \
        pipeline["pipeline_pk_id"], pipeline["pipeline_variant_pk_id"]


def _check_rows(rows: list[dict], with_inputs: bool = True) -> None:
    """Every logged row's output is the model's output for its own input, each row logged once."""
    for row in rows:
        assert ("in" in row) == with_inputs, row
    if with_inputs:
        expected = onnx_outputs(np.array([row["in"]["tensor"] for row in rows], dtype=np.float32))
        assert np.allclose([row["out"]["dense_1"] for row in rows], expected, atol=1e-6)
        marks = [row["in"]["tensor"][0] for row in rows]
        assert len(set(marks)) == len(marks)


def test_each_log_policy_logs_what_it_says_and_concurrent_requests_are_answered_alone(stack, alice):
    _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
    deployed = {name: _deploy(stack, alice, name, policy) for name, policy in POLICIES.items()}
    urls = {name: url for name, (url, _, _) in deployed.items()}
    bad = post(stack, "pipelines/deploy", alice.token, {
        "deploy_id": "pol-all", "pipeline_version_pk_id": deployed["pol-all"][2],
        "pipeline_id": deployed["pol-all"][1], "engine_config": {"log_policy": {"mode": "most"}}})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request", bad.text
    assert "log_policy" in bad.json()["msg"]
    for url in urls.values():
        answer = infer(url, alice.token, marked(range(400)))
        assert answer.status_code == 200 and len(answer.json()) == 400, answer.text  # answers whatever is logged

    everything = wait_rows(stack, alice, "pol-all", 400)
    assert len(everything) == 400
    _check_rows(everything)
    outputs = wait_rows(stack, alice, "pol-outputs", 400)
    assert len(outputs) == 400 and all(set(row["out"]) == {"dense_1"} for row in outputs)
    _check_rows(outputs, with_inputs=False)
    sampled = wait_rows(stack, alice, "pol-sampled", 120)
    time.sleep(1.0)  # a batch is published whole: more rows than those seen would have arrived by now
    sampled = all_rows(stack, alice, "pol-sampled")
    assert 120 < len(sampled) < 280, len(sampled)  # 400 rows at 0.5: 200 +- 10 standard deviations
    _check_rows(sampled)
    assert all_rows(stack, alice, "pol-off") == []  # the others' rows are in by now; this one logs nothing

    # concurrent requests to one replica (batched together when they queue up): each answer is its own rows,
    # a bad request fails alone, and every good row is logged
    bad_rows = sample_rows(1, seed=4)
    bad_rows[0, 0] = np.nan
    bad_body = to_ipc_file(pa.table({"tensor": tensor_array(bad_rows)}))
    bodies = [marked(range(500 + 3 * i, 503 + 3 * i)) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        failed = pool.submit(infer, urls["pol-all"], alice.token, bad_body, ARROW)
        answers = list(pool.map(lambda body: infer(urls["pol-all"], alice.token, body), bodies))
    assert failed.result().status_code == 400 and "NaN" in failed.result().json()["msg"]
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert [r["in"]["tensor"][0] for r in answer.json()] == [r["tensor"][0] for r in body]
        expected = onnx_outputs(np.array([r["tensor"] for r in body], dtype=np.float32))
        assert np.allclose([r["out"]["dense_1"] for r in answer.json()], expected, atol=1e-6)
    rows = wait_rows(stack, alice, "pol-all", 400 + 72)
    assert len(rows) == 472
    _check_rows(rows)
    for _, pipeline_id, _ in deployed.values():
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline_id})
