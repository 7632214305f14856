"""What each `railyard` command imports and how long it takes, against a real test stack.

    python -m bench.cli_commands audit OLD_CLIENT|-    # every command once: heavy modules it imported, wall time
    python -m bench.cli_commands ab OLD_CLIENT ROUNDS  # wall time, the client at OLD_CLIENT (a copy of client/,
                                                       # put first on PYTHONPATH) against this tree's, A B B A

Starts a stack (`tests/stack.py`, as the integration tests do), signs the admin in with the CLI, makes a
workspace, uploads and deploys ccfraud, a tabular dataset; then runs each command as a user would (the
`railyard` console script, `-X importtime` through PYTHONPROFILEIMPORTTIME). Prints one line per command with
the load average. A development measurement: the machine is shared.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("pandas", "pyarrow", "numpy", "pyarrow.parquet", "pyarrow.csv", "httpx", "httpx._main", "rich.console",
         "rich.progress", "importlib.metadata", "shared.cli")
RAILYARD = str(Path(sys.executable).parent / "railyard")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Cli:
    def __init__(self, home: Path, client: str | None = None) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAILYARD_", "TASK_", "ORCH_"))}
        self.env["XDG_CONFIG_HOME"] = str(home / "config")
        if client:
            self.env["PYTHONPATH"] = client
        self.cwd = home

    def run(self, args: list[str], stdin: bytes | None = None, importtime: bool = False) -> tuple[float, bytes,
                                                                                                   bytes, int]:
        env = self.env | ({"PYTHONPROFILEIMPORTTIME": "1"} if importtime else {})
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([RAILYARD, *args], env=env, cwd=self.cwd, input=stdin, capture_output=True,
                              timeout=600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the command's own CPU
        return time.perf_counter() - started, done.stdout, done.stderr, done.returncode

    def ok(self, *args: str, stdin: bytes | None = None) -> bytes:
        _, out, err, code = self.run(list(args), stdin)
        if code:
            raise RuntimeError(f"railyard {' '.join(args)}: {code} {err.decode()}")
        return out


def imported(stderr: bytes) -> dict[str, int]:
    """{module: cumulative microseconds} of the -X importtime report."""
    found = {}
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if cumulative.strip().isdigit():
                found[name.strip()] = int(cumulative)
    return found


def commands(home: Path) -> list[tuple[str, list[str], bytes | None]]:
    rows = (home / "rows.json").read_bytes()
    return [
        ("--help", ["--help"], None),
        ("token", ["token"], None),
        ("workspaces list", ["workspaces", "list"], None),
        ("models list", ["models", "list"], None),
        ("models versions", ["models", "versions", "ccfraud"], None),
        ("pipelines list", ["pipelines", "list"], None),
        ("pipelines status", ["pipelines", "status", "clifraud"], None),
        ("infer json", ["infer", "clifraud", "rows.json", "--json"], None),
        ("infer json table", ["infer", "clifraud", "rows.json"], None),
        ("infer stdin", ["infer", "clifraud", "--json"], rows),
        ("infer parquet", ["infer", "clifraud", "rows.parquet", "--json"], None),
        ("infer parquet -o parquet", ["infer", "clifraud", "rows.parquet", "-o", "answer.parquet"], None),
        ("infer parquet -o arrow", ["infer", "clifraud", "rows.parquet", "-o", "answer.arrow"], None),
        ("infer parquet -o json", ["infer", "clifraud", "rows.parquet", "-o", "answer.json"], None),
        ("infer json -o json", ["infer", "clifraud", "rows.json", "-o", "records.json"], None),
        ("logs table", ["pipelines", "logs", "clifraud", "--limit", "100"], None),
        ("logs --json", ["pipelines", "logs", "clifraud", "--limit", "100", "--json"], None),
        ("logs -o parquet", ["pipelines", "logs", "clifraud", "--limit", "100", "-o", "logs.parquet"], None),
        ("logs -o arrow", ["pipelines", "logs", "clifraud", "--limit", "100", "-o", "logs.arrow"], None),
        ("logs -o json", ["pipelines", "logs", "clifraud", "--limit", "100", "-o", "logs.json"], None),
        ("assays list", ["assays", "list", "clifraud"], None),
        ("datasets projects", ["datasets", "projects"], None),
        ("datasets list", ["datasets", "list", "PROJECT"], None),
        ("datasets upload json", ["datasets", "upload", "DATASET", "table.json", "--replace"], None),
        ("datasets upload parquet", ["datasets", "upload", "DATASET", "table.parquet", "--replace"], None),
        ("datasets read", ["datasets", "read", "DATASET"], None),
        ("datasets read --json", ["datasets", "read", "DATASET", "--json"], None),
        ("datasets read -o parquet", ["datasets", "read", "DATASET", "-o", "rows-out.parquet"], None),
        ("datasets read -o arrow", ["datasets", "read", "DATASET", "-o", "rows-out.arrow"], None),
        ("datasets read -o csv", ["datasets", "read", "DATASET", "-o", "rows-out.csv"], None),
        ("orchestrations list", ["orchestrations", "list"], None),
        ("tasks list", ["tasks", "list"], None),
    ]


def prepare(stack, home: Path) -> tuple[str, str]:
    """Signed in as the admin, a workspace with ccfraud deployed as `clifraud`, 60 rows inferred, a dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.models import ccfraud_onnx, sample_rows

    cli = Cli(home)
    cli.ok("login", "--url", stack.base_url, "--data-dir", str(stack.data_dir))
    cli.ok("workspaces", "create", "clibench")
    cli.ok("workspaces", "use", "clibench")
    (home / "ccfraud.onnx").write_bytes(ccfraud_onnx())
    cli.ok("models", "upload", "ccfraud", "ccfraud.onnx", "--no-progress")
    cli.ok("pipelines", "create", "clifraud", "--model", "ccfraud")
    cli.ok("pipelines", "deploy", "clifraud", "--no-progress")
    rows = sample_rows(60, seed=3).astype("float64")
    (home / "rows.json").write_text(json.dumps([{"tensor": row.tolist()} for row in rows]))
    pq.write_table(pa.table({"tensor": pa.array(rows.tolist(), pa.list_(pa.float64()))}), home / "rows.parquet")
    cli.ok("infer", "clifraud", "rows.json")
    table = pa.table({"a": pa.array(range(200), pa.float64()), "b": pa.array([f"r{i}" for i in range(200)])})
    pq.write_table(table, home / "table.parquet")
    (home / "table.json").write_text(json.dumps(table.to_pylist()))
    project = json.loads(cli.ok("datasets", "create-project", "clibench", "--json"))["id"]
    dataset = json.loads(cli.ok("datasets", "create", str(project), "rows", "--json"))["id"]
    cli.ok("datasets", "upload", str(dataset), "table.parquet")
    deadline = time.monotonic() + 30
    while len(json.loads(cli.ok("pipelines", "logs", "clifraud", "--json"))) < 60 and time.monotonic() < deadline:
        time.sleep(0.3)
    return str(project), str(dataset)


def resolved(home: Path, project: str, dataset: str) -> list[tuple[str, list[str], bytes | None]]:
    return [(name, [project if a == "PROJECT" else dataset if a == "DATASET" else a for a in args], stdin)
            for name, args, stdin in commands(home)]


def audit(stack, home: Path, old: str | None, only: list[str]) -> None:
    project, dataset = prepare(stack, home)
    clis = {"B": Cli(home)} if not old else {"A": Cli(home, old), "B": Cli(home)}
    for name, args, stdin in resolved(home, project, dataset):
        if only and name not in only:
            continue
        for which, cli in clis.items():
            seconds, _, err, code = cli.run(args, stdin, importtime=True)
            found = imported(err)
            heavy = {m: round(found[m] / 1000) for m in HEAVY if m in found}
            print(f"{which} {name:26} exit {code} {seconds:5.2f} s  modules {len(found)}  heavy (ms cumulative):"
                  f" {heavy}  load {load()}", flush=True)


def ab(stack, home: Path, old: str, rounds: int, only: list[str]) -> None:
    project, dataset = prepare(stack, home)
    clis = {"A": Cli(home, old), "B": Cli(home)}
    for name, args, stdin in resolved(home, project, dataset):
        if only and name not in only:
            continue
        times: dict[str, list[float]] = {"A": [], "B": []}
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        loads = []
        for round_ in range(rounds):
            for which in ("AB" if round_ % 2 == 0 else "BA"):
                seconds, _, err, code = clis[which].run(args, stdin)
                if code:
                    raise RuntimeError(f"{which} {name}: {err.decode()[-500:]}")
                times[which].append(seconds)
                cpu[which].append(clis[which].cpu)
            loads.append(float(load().split()[0]))

        def median(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        print(f"{name:26} wall s A {median(times['A'])} B {median(times['B'])}  CPU s A {median(cpu['A'])}"
              f" B {median(cpu['B'])}  load {min(loads):.1f}-{max(loads):.1f}", flush=True)


def main() -> None:
    import tempfile

    from tests.stack import stack_directory, start_stack

    mode = sys.argv[1]
    with stack_directory() as data_dir, tempfile.TemporaryDirectory() as home:
        stack = start_stack(data_dir)
        try:
            stack.wait_healthy()
            if mode == "audit":  # audit [OLD_CLIENT|-] [COMMAND ...]
                audit(stack, Path(home), None if sys.argv[2] == "-" else sys.argv[2], sys.argv[3:])
            else:
                ab(stack, Path(home), sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
