"""A graceful stop of a real stack loses no inference-log row of an answered request (not a pytest test: ~2 min).

Starts its own embedded stack (tests/stack.py) with the engines' log flush interval at FLUSH_MS, deploys N pipelines
(ccfraud ONNX), answers K requests on each, then stops the stack at once with SIGTERM: every replica still holds
its rows (its batcher publishes after the interval, and its graceful stop waits for that flush), so the deployer's
stop takes about FLUSH_MS. The stack is started again on the same data directory and the rows are counted through
get_logs. With FLUSH_MS above the services' stop grace this shows what the supervisor does with a deployer whose
replicas are slow to publish their last batch (rev1, notes/s8/requests.md 00:47). Measured, 3 x 5 requests,
FLUSH_MS 7000, stop grace 5 s: before 502bd2b/3178c01 the deployer was killed after 5 s with its group, 0 of 15 rows;
after, it stopped in 7.4 s, 15 of 15.

    .venv/bin/python -m tests.stop_logs_check [N] [K] [STOP_GRACE] [FLUSH_MS]     (defaults 3 5 5 7000)
"""

from __future__ import annotations

import json
import sys
import time

import requests

from tests.integration.conftest import PASSWORD, client_for, make_account
from tests.integration.test_logs import all_rows, marked
from tests.integration.test_pipelines import RECORDS, _deploy_definition, _upload_bytes
from tests.models import ccfraud_onnx
from tests.stack import stack_directory, stack_env, start_stack


def main(count: int, requests_each: int, grace: str, flush_ms: str) -> int:
    with stack_directory() as data_dir:
        env = stack_env(data_dir)
        env["RAILYARD_STACK__STOP_GRACE"] = grace
        env["RAILYARD_LOGS__ENGINE_FLUSH_MS"] = flush_ms
        stack = start_stack(data_dir, env)
        try:
            stack.wait_healthy()
            admin = client_for(stack)
            secrets = stack.secrets()
            admin.login(secrets["admin_username"], secrets["admin_password"])
            alice = make_account(stack, admin, "alice")
            _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
            names = [f"held{i}" for i in range(count)]
            urls = [_deploy_definition(stack, alice, name, {"steps": [
                {"ModelInference": {"models": [{"name": "ccfraud"}]}}]})[1] for name in names]
            for url in urls:
                for value in range(requests_each):
                    response = requests.post(url, data=json.dumps(marked(range(value, value + 1))), timeout=60,
                                             headers={"Authorization": f"Bearer {alice.token}",
                                                      "Content-Type": RECORDS})
                    assert response.status_code == 200, response.text
            began = time.monotonic()
            code = stack.stop()
            print(f"answered {count * requests_each}; stopped in {time.monotonic() - began:.1f} s (exit {code})")
            print("\n".join(line for line in stack.output.read_text().splitlines() if "did not stop" in line))
            stack = start_stack(data_dir, env)
            stack.wait_healthy()
            alice.client.login(alice.email, PASSWORD)
            deadline = time.monotonic() + 90
            while True:
                counts = [len(all_rows(stack, alice, name, restarting_ok=True) or []) for name in names]
                if sum(counts) >= count * requests_each or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            print(f"rows logged after a restart: {counts}, {sum(counts)} of {count * requests_each}")
            return 0 if sum(counts) == count * requests_each else 1
        finally:
            stack.stop()


if __name__ == "__main__":
    args = sys.argv[1:] + ["3", "5", "5", "7000"][len(sys.argv) - 1:]
    sys.exit(main(int(args[0]), int(args[1]), args[2], args[3]))
