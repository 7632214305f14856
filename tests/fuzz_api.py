"""A bounded property-based robustness pass over the gateway's HTTP API (`make fuzz-api`; docs/testing.md).

Starts its own embedded stack (tests/stack.py: a temporary data directory, free loopback ports), signs in as the
stack's admin, creates a workspace for the generated requests to land in and one of each thing the API names in it
(tests/fuzz_api_seed.py: a deployed pipeline, an orchestration, a project, ...), and runs schemathesis (installed
in its own environment, .venv-schemathesis, so its pins never decide ours) against the gateway's
/v1/api/openapi.json with one worker. Half of the requests are aimed at those real ids (tests/fuzz_api_hooks.py),
so they reach the handlers instead of stopping at a 404. The check that matters is `not_a_server_error`: bad
input must come back as a typed 4xx, never a 5xx. The stack is stopped however the run ends.

    .venv/bin/python -m tests.fuzz_api [--max-examples 10] [--max-time 600] [--seed N] [schemathesis options...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.fuzz_api_seed import seed
from tests.stack import REPO, stack_directory, start_stack

SCHEMATHESIS = REPO / ".venv-schemathesis" / "bin" / "schemathesis"
HOOKS = REPO / "tests" / "fuzz_api_hooks.py"
# the token endpoint is form-encoded and rate-limited per source; generating passwords for it only fills the
# lockout table (its own tests are tests/integration/test_auth.py). Everything else is fuzzed.
EXCLUDED_PATHS = r"^/auth/"
# what services log for an error nobody handled: the bus and the gateway (shared/bus.py, services/gateway/http.py),
# and asyncio for a background task's or callback's
UNHANDLED = ("unhandled error", "Task exception was never retrieved", "Exception in callback")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:")  # a service log line's start (shared/service.py's format)


def admin_client(stack):
    """The admin signed in (the password grant, as `railyard login` does) and the fuzz workspace's id."""
    from shared.client import RailyardClient

    secrets = stack.secrets()
    client = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
    client.login(secrets["admin_username"], secrets["admin_password"])
    return client, client.post("workspaces/create", {"workspace_name": "fuzz"})["workspace_id"]


def alive(stack) -> bool:
    """Whether the stack's supervisor still runs and every service answers its health check."""
    status, _ = stack.health()
    return stack.process.poll() is None and status == 200


def unhandled_errors(data_dir: Path, report_dir: Path) -> int:
    """Errors the services logged as unhandled while the run went on (a handler that failed after answering, a
    background task): each is a finding even when no answer was a 5xx. Prints each distinct one with where it was
    raised, copies the logs that hold them to the report directory, and returns how many there were."""
    found: dict[tuple[str, str], int] = {}
    for log in sorted((data_dir / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        blocks = [block for marker in UNHANDLED for block in text.split(marker)[1:]]
        if not blocks:
            continue
        (report_dir / f"unhandled-{log.name}").write_text(text)
        for block in blocks:
            lines = block.splitlines()[1:]
            end = next((i for i, line in enumerate(lines) if LOG_LINE.match(line)), len(lines))
            trace = [line for line in lines[:end] if line.strip()]
            raised = next((line.strip() for line in reversed(trace) if line.startswith("  File ")), "?")
            last = next((line for line in reversed(trace) if not line.startswith(" ")), block.splitlines()[0])
            key = (log.stem, f"{raised} -> {last[:300]}")
            found[key] = found.get(key, 0) + 1
    for (service, what), count in sorted(found.items()):
        print(f"UNHANDLED in {service} ({count}x): {what}", flush=True)
    return sum(found.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=10, help="test cases per operation (default 10)")
    parser.add_argument("--max-time", type=int, default=600, help="seconds for the whole run (default 600)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checks", default="not_a_server_error",
                        help="schemathesis checks (default not_a_server_error; e.g. add response_schema_conformance)")
    parser.add_argument("--report-dir", default=str(REPO / ".railyard" / "fuzz-api"))
    parser.add_argument("--seed-share", type=float, default=0.5,
                        help="share of requests aimed at real ids (tests/fuzz_api_hooks.py; 0 turns it off)")
    args, extra = parser.parse_known_args(argv)
    if not SCHEMATHESIS.exists():
        sys.exit(f"{SCHEMATHESIS} is missing: `make fuzz-api` creates it")
    with stack_directory() as data_dir:
        stack = start_stack(data_dir)
        try:
            stack.wait_healthy(180)
            admin, workspace_id = admin_client(stack)
            started = time.monotonic()
            seeds = seed(stack, admin, workspace_id)
            seeds_file = Path(args.report_dir) / "seeds.json"
            seeds_file.parent.mkdir(parents=True, exist_ok=True)
            seeds_file.write_text(json.dumps(seeds, indent=1))
            print(f"seeded in {time.monotonic() - started:.0f} s: {seeds_file}", flush=True)
            admin.login(stack.secrets()["admin_username"], stack.secrets()["admin_password"])  # a fresh token
            token = admin.token
            environment = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "RAILYARD_FUZZ_SEEDS": str(seeds_file),
                           "RAILYARD_FUZZ_SEED_SHARE": str(args.seed_share)}
            spec = f"{stack.base_url}/v1/api/openapi.json"
            with urllib.request.urlopen(spec, timeout=10) as response:
                operations = sum(len(v) for v in json.loads(response.read())["paths"].values())
            print(f"stack up at {stack.base_url}; {operations} operations in {spec}", flush=True)
            command = [str(SCHEMATHESIS), "--no-color", "run", spec, "--url", stack.base_url,
                       "-H", f"Authorization: Bearer {token}", "--workers", "1",
                       "--checks", args.checks, "--max-examples", str(args.max_examples),
                       "--max-time", str(args.max_time), "--request-timeout", "60",
                       "--exclude-path-regex", EXCLUDED_PATHS, "--suppress-health-check", "all",
                       "--generation-database", "none", "--report", "ndjson,junit", "--report-dir", args.report_dir,
                       *extra]
            if args.seed is not None:
                command += ["--seed", str(args.seed)]
            started = time.monotonic()
            code = subprocess.call(command, cwd=REPO, env=environment)
            print(f"schemathesis exited {code} after {time.monotonic() - started:.0f} s; "
                  f"stack {'healthy' if alive(stack) else 'NOT HEALTHY (a service crashed?)'}; "
                  f"reports in {args.report_dir}", flush=True)
            if not alive(stack):
                print((data_dir.parent / f"{data_dir.name}-up.log").read_text()[-4000:])
                code = code or 1
            if unhandled_errors(data_dir, Path(args.report_dir)):
                code = code or 1
            return code
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
