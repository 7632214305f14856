"""`railyard infer` and `railyard pipelines logs --json` print JSON from JSON or Arrow and never need pandas, yet
imported it (0.3-1 s of a command's start): `isinstance(x, pd.DataFrame)` on the lazy module, and pyarrow's
pandas shim behind `pa.array`, `pa.Table.from_pylist` and `pq.read_table`. Each command runs in a fresh
interpreter with the real CLI and SDK and only the HTTP answers canned; pandas must not be in `sys.modules` when
it ends, and the output must be the very bytes it printed before (written out here, not computed by the code under
test). The SDK's DataFrame methods still answer DataFrames (last test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# The child: the real `railyard` main with the pipeline's session answering from files in its directory.
STUB = r'''
import json, sys
from pathlib import Path
from railyard_client import cli
from railyard_client.pipelines import Pipeline

here = Path(sys.argv[1])
sent = []


class Response:
    def __init__(self, content=b"", headers=None, body=None):
        self.content, self.headers, self._body = content, headers or {}, body

    def json(self):
        return self._body


class Session:
    def send(self, method, path, **kw):
        kind = kw["headers"].get("Content-Type")
        body = json.loads(kw["content"]) if kind and kind.startswith("application/json") and "content" in kw \
            else json.loads(json.dumps(kw.get("json")))  # (the body is reused)
        sent.append({"path": path, "json": body, "type": kind})
        if path == "/v1/api/pipelines/infer/fraud-1/fraud":
            if kw["headers"]["Content-Type"].startswith("application/json"):
                return Response(body=json.loads((here / "answer.json").read_text()))
            return Response((here / "answer.arrow").read_bytes())
        if path == "/v1/api/pipelines/get_logs":  # newest page first, then the older one
            page = 2 if kw["json"].get("cursor") == "older" else 1
            headers = {"x-iteration-status": "All"} if page == 2 else {"x-iteration-cursor": "older"}
            return Response((here / f"logs{page}.arrow").read_bytes(), headers)
        if path == "/v1/api/datasets/get_rows":
            return Response((here / "dataset.arrow").read_bytes())
        if path == "/v1/api/datasets/upload_rows":
            (here / "uploaded.arrow").write_bytes(kw["content"])
            return Response(body={"rows_added": 2})
        raise AssertionError(path)

    def post(self, route, body):
        sent.append({"path": route, "json": body})
        if route == "datasets/get":
            return {"id": body["dataset_id"], "kind": "tabular"}
        raise AssertionError(route)


class Deployed(Pipeline):
    def deployment(self):
        return type("Deployment", (), {"name": "fraud-1"})()


class Workspace:
    id = 1

    def pipeline(self, name):
        return Deployed(Session(), 1, name, {"name": name, "workspace_id": 1, "id": 1})


cli._client = lambda workspace=None: type("Client", (), {"current_workspace": lambda self: Workspace(),
                                                         "_session": Session()})()
'''
CHILD = STUB + r'''
code = cli.main(sys.argv[2:])
print(json.dumps({"pandas": "pandas" in sys.modules, "pyarrow": "pyarrow" in sys.modules, "sent": sent}),
      file=sys.stderr)
sys.exit(code)
'''
# Commands one after another in one interpreter (for those run with pandas loaded, where a fresh interpreter each
# imported pandas again, ~0.7 s of CPU): [[directory, args], ...] in argv[2] (argv[1]: the first directory), each
# command's [exit code, stdout, {pandas, pyarrow, sent}] in the JSON file argv[3].
BATCH = STUB + r'''
import contextlib, io
done = []
for directory, args in json.loads(sys.argv[2]):
    here = Path(directory)
    sent.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args)
    done.append([code, out.getvalue(),
                 {"pandas": "pandas" in sys.modules, "pyarrow": "pyarrow" in sys.modules, "sent": list(sent)}])
Path(sys.argv[3]).write_text(json.dumps(done))
'''

ROWS = [{"tensor": [0.5, -1.25]}, {"tensor": [2.0, 0.0]}]
METADATA = {"last_model": '{"model_name": "ccfraud", "model_sha": "6be4"}', "pipeline_version": "848242a3",
            "elapsed": [194279, 626013]}
ANSWER_JSON = [{"time": 1796264828977, "in": {"tensor": row["tensor"]}, "out": {"dense_1": [0.125 * i]},
                "check_failures": [], "metadata": METADATA} for i, row in enumerate(ROWS)]
ANSWER_ROWS = [{"time": 1796264830695 + i, "in.tensor": row["tensor"], "out.dense_1": [0.125 * i],
                "check_failures": []} for i, row in enumerate(ROWS)]
# the logs, oldest first, as `railyard pipelines logs --json` printed them (the API pages them newest first)
LOG_ROWS = [{"time": 1796264776277 + i, "in.tensor": [0.5 * i, -1.0], "out.dense_1": [0.25 * i],
             "metadata.last_model": METADATA["last_model"], "metadata.pipeline_version": "848242a3",
             "metadata.elapsed": [1000 + i, 2000], "metadata.dropped": []} for i in range(5)]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _log_page(rows: list[dict]) -> bytes:
    """A page of logs as the log API's Arrow answer types it (fixed-size lists, dictionary strings)."""
    return _ipc(pa.table({
        "time": pa.array([r["time"] for r in rows], pa.int64()),
        "in.tensor": pa.array([r["in.tensor"] for r in rows], pa.list_(pa.float32(), 2)),
        "out.dense_1": pa.array([r["out.dense_1"] for r in rows], pa.list_(pa.float32(), 1)),
        "metadata.last_model": pa.array([r["metadata.last_model"] for r in rows]).dictionary_encode(),
        "metadata.pipeline_version": pa.array([r["metadata.pipeline_version"] for r in rows]).dictionary_encode(),
        "metadata.elapsed": pa.array([r["metadata.elapsed"] for r in rows], pa.list_(pa.int64())),
        "metadata.dropped": pa.array([r["metadata.dropped"] for r in rows], pa.list_(pa.string()))}))


@pytest.fixture
def canned(tmp_path: Path) -> Path:
    return fill_canned(tmp_path)


def fill_canned(tmp_path: Path) -> Path:
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    pq.write_table(pa.table({"tensor": pa.array([r["tensor"] for r in ROWS], pa.list_(pa.float64()))}),
                   tmp_path / "rows.parquet")
    (tmp_path / "answer.json").write_text(json.dumps(ANSWER_JSON))
    (tmp_path / "answer.arrow").write_bytes(_ipc(pa.table({
        "time": pa.array([r["time"] for r in ANSWER_ROWS], pa.int64()),
        "in.tensor": pa.array([r["in.tensor"] for r in ANSWER_ROWS], pa.list_(pa.float64())),
        "out.dense_1": pa.array([r["out.dense_1"] for r in ANSWER_ROWS], pa.list_(pa.float32(), 1)),
        "check_failures": pa.array([r["check_failures"] for r in ANSWER_ROWS], pa.list_(pa.string()))})))
    (tmp_path / "logs1.arrow").write_bytes(_log_page(LOG_ROWS[:1:-1]))  # the newest three, newest first
    (tmp_path / "logs2.arrow").write_bytes(_log_page(LOG_ROWS[1::-1]))
    (tmp_path / "dataset.arrow").write_bytes(_ipc(DATASET))
    return tmp_path


DATASET = pa.table({"a": pa.array([0.5, 1.5]), "b": pa.array(["x", "y"])})


def read_back(path: Path) -> list[dict]:
    """The rows of a file the CLI wrote, as Python values (JSON files as they are)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).read().to_pylist()
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all().to_pylist()


def run(directory: Path, *args: str) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(directory), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def run_in_one_interpreter(preamble: str, commands: list[tuple[Path, list[str]]], answers: Path) -> list[tuple]:
    """run's (exit code, stdout, child) for each command, run one after another in one interpreter after `preamble`
    (an exit code of 0 is not asserted here)."""
    listed = json.dumps([[str(directory), args] for directory, args in commands])
    done = subprocess.run([sys.executable, "-c", preamble + BATCH, str(commands[0][0]), listed, str(answers)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [tuple(answer) for answer in json.loads(answers.read_text())]


def printed(rows: list[dict]) -> str:
    """What `show(..., as_json=True)` prints."""
    return json.dumps(rows, indent=1) + "\n"


# The commands that must not import pandas (nor, the first two, pyarrow), one after another in one fresh interpreter
# (they were a fresh interpreter each, ~0.6 s of CPU, and test_the_json_commands_print_the_same_when_pandas_is_loaded
# started three more for the same commands): what each left in sys.modules is read right after it, so a command that
# imports pandas is caught by its own check (an earlier one's import would fail the later checks too, never hide one).
# Those that load pyarrow (a parquet file, Arrow pages) come after those checked without it.
WITHOUT = {"json": ["infer", "fraud", "rows.json", "--json"],
           "json-to-file": ["infer", "fraud", "rows.json", "-o", "out.json"],
           "parquet": ["infer", "fraud", "rows.parquet", "--json"],
           "logs": ["pipelines", "logs", "fraud", "--limit", "0", "--json"]}


@pytest.fixture(scope="module")
def without(tmp_path_factory) -> tuple[Path, dict[str, tuple]]:
    """The canned directory and each of WITHOUT's (exit code, stdout, child), run without pandas."""
    canned = fill_canned(tmp_path_factory.mktemp("without"))
    commands = [(canned, [str(canned / a) if a.startswith(("rows.", "out.")) else a for a in args])
                for args in WITHOUT.values()]
    answers = run_in_one_interpreter("", commands, canned / "done.json")
    return canned, dict(zip(WITHOUT, answers, strict=True))


def test_infer_json_file_prints_the_apis_records_without_pandas(without):
    _, answers = without
    code, out, child = answers["json"]
    assert code == 0 and out == printed(ANSWER_JSON)
    assert child["sent"] == [{"path": "/v1/api/pipelines/infer/fraud-1/fraud", "json": ROWS,
                              "type": "application/json; format=pandas-records"}]
    assert child["pandas"] is False
    assert child["pyarrow"] is False  # JSON in, JSON out: no Arrow either (isinstance checks on `pa.` imported it)


def test_infer_json_to_a_json_file_without_pandas_or_pyarrow(without):
    canned, answers = without
    code, _, child = answers["json-to-file"]
    assert code == 0 and json.loads((canned / "out.json").read_text()) == ANSWER_JSON
    assert (child["pandas"], child["pyarrow"]) == (False, False)


SUFFIXES = ["parquet", "arrow", "json"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    """`infer -o` and `pipelines logs -o` into a file of each suffix, the six commands one after another in one fresh
    interpreter (a fresh one for each suffix's two, before): the directory and each suffix's two (exit code, stdout,
    child). pandas is looked for after each."""
    canned = fill_canned(tmp_path_factory.mktemp("written"))
    commands = []
    for suffix in SUFFIXES:
        answer, logs = canned / f"answer-out.{suffix}", canned / f"logs-out.{suffix}"
        commands += [(canned, ["infer", "fraud", str(canned / "rows.parquet"), "-o", str(answer)]),
                     (canned, ["pipelines", "logs", "fraud", "--limit", "0", "-o", str(logs)])]
    answers = run_in_one_interpreter("", commands, canned / "done.json")
    return canned, {suffix: answers[2 * i:2 * i + 2] for i, suffix in enumerate(SUFFIXES)}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_output_files_are_written_without_pandas(written, suffix: str):
    """`-o FILE` of `infer` (Arrow answer) and `pipelines logs`: the rows in the file, and no pandas."""
    canned, answers = written
    assert [(code, child["pandas"]) for code, _, child in answers[suffix]] == [(0, False), (0, False)], answers
    assert read_back(canned / f"answer-out.{suffix}") == ANSWER_ROWS
    assert read_back(canned / f"logs-out.{suffix}") == LOG_ROWS


READS = [[], ["--json"], ["-o", "rows.parquet"], ["-o", "rows.arrow"], ["-o", "rows.csv"]]


@pytest.fixture(scope="module")
def datasets_read(tmp_path_factory) -> tuple[Path, dict[tuple, tuple]]:
    """`datasets read 7` with each of READS' arguments, one after another in one fresh interpreter (each writes its
    own file, or prints): the canned directory and each command's (exit code, stdout, child)."""
    canned = fill_canned(tmp_path_factory.mktemp("read"))
    commands = [[str(canned / a) if a.startswith("rows.") else a for a in args] for args in READS]
    answers = run_in_one_interpreter("", [(canned, ["datasets", "read", "7", *target]) for target in commands],
                                     canned / "done.json")
    return canned, dict(zip(map(tuple, READS), answers, strict=True))


@pytest.mark.parametrize("args", READS)
def test_datasets_read_without_pandas(datasets_read, args: list[str]):
    canned, answers = datasets_read
    target = [str(canned / a) if a.startswith("rows.") else a for a in args]
    code, out, child = answers[tuple(args)]
    assert code == 0, out
    assert child["sent"][0]["path"] == "/v1/api/datasets/get_rows" and child["pandas"] is False
    if args == ["--json"]:
        assert json.loads(out) == DATASET.to_pylist()
    elif args and args[1] != "rows.csv":
        assert read_back(Path(target[1])) == DATASET.to_pylist()
    elif args:
        assert (canned / "rows.csv").read_text() == '"a","b"\n0.5,"x"\n1.5,"y"\n'


def test_infer_json_from_stdin_without_pandas(canned: Path):
    done = subprocess.run([sys.executable, "-c", CHILD, str(canned), "infer", "fraud", "--json"],
                          input=json.dumps(ROWS), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed(ANSWER_JSON)
    assert json.loads(done.stderr.strip().splitlines()[-1])["pandas"] is False


def test_infer_parquet_file_prints_arrow_columns_without_pandas(without):
    code, out, child = without[1]["parquet"]
    assert code == 0 and out == printed(ANSWER_ROWS)
    assert child["sent"][0]["type"] == "application/vnd.apache.arrow.file" and child["pandas"] is False


def test_pipelines_logs_json_prints_every_page_oldest_first_without_pandas(without):
    code, out, child = without[1]["logs"]
    assert code == 0 and out == printed(LOG_ROWS)
    assert [s["json"].get("cursor") for s in child["sent"]] == [None, "older"]
    assert child["pandas"] is False


def test_the_json_commands_print_the_same_when_pandas_is_loaded(without):
    """The same output whether or not pandas is in the process (as it was before these commands stopped importing
    it): nothing printed depends on it."""
    canned, answers = without
    names = ["json", "parquet", "logs"]
    commands = [[str(canned / a) if a.startswith("rows.") else a for a in WITHOUT[name]] for name in names]
    # the three with pandas loaded in one interpreter (pandas is there anyway); without it: `without`'s
    loaded = run_in_one_interpreter("import pandas\n", [(canned, args) for args in commands],
                                    canned / "done-loaded.json")
    for name, (code, out, child) in zip(names, loaded, strict=True):
        assert code == 0 and child["pandas"] is True
        assert answers[name][2]["pandas"] is False
        assert out == answers[name][1]


def test_the_sdk_still_answers_dataframes(canned: Path):
    """Seed 003's contracts: `infer` of a DataFrame and `logs()` answer DataFrames (times as UTC datetimes), every
    page oldest first."""
    import pandas as pd
    from railyard_client.pipelines import Pipeline, infer_at

    class Session:
        def send(self, method, path, json=None, **kw):
            if path == "/v1/api/pipelines/get_logs":
                page = 2 if json.get("cursor") == "older" else 1
                headers = {"x-iteration-status": "All"} if page == 2 else {"x-iteration-cursor": "older"}
                return type("Response", (), {"content": (canned / f"logs{page}.arrow").read_bytes(),
                                             "headers": headers})()
            return type("Response", (), {"content": (canned / "answer.arrow").read_bytes(), "headers": {}})()

    frame = infer_at(Session(), "fraud-1", "fraud", pd.DataFrame({"tensor": [r["tensor"] for r in ROWS]}))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(ANSWER_ROWS[0])
    assert str(frame["time"].dtype) == "datetime64[ms, UTC]"
    logs = Pipeline(Session(), 1, "fraud", {"name": "fraud", "workspace_id": 1, "id": 1}).logs(limit=None)
    assert isinstance(logs, pd.DataFrame) and str(logs["time"].dtype) == "datetime64[ms, UTC]"
    assert [t.value // 10**6 for t in logs["time"]] == [r["time"] for r in LOG_ROWS]
    assert logs["metadata.elapsed"].map(list).tolist() == [r["metadata.elapsed"] for r in LOG_ROWS]


# the `railyard` command's process (the console script): pandas is declined there only, not in an SDK user's process
AS_THE_COMMAND = "import sys\nsys.argv[0] = 'railyard'\n"
UPLOADED = [{"a": 1, "b": "x", "c": [0.5, 1.0], "d": None, "e": {"k": 1, "s": "v"}, "f": True},
            {"a": 2, "b": None, "c": [2.0], "d": None, "e": {"k": None, "s": "w"}, "f": False}]


def test_datasets_upload_of_a_json_file_makes_the_same_table_without_pandas(canned: Path):
    """`datasets upload` of a .json/.jsonl file into a tabular dataset imported pandas (pyarrow's pandas shim
    behind `pa.Table.from_pylist`, docs/performance.md item 46's one leftover). The Arrow file sent is the same
    bytes as with pandas loaded, and holds the rows."""
    (canned / "rows.json").write_text(json.dumps(UPLOADED))
    (canned / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in UPLOADED))
    sent = {}
    # without pandas, then with it loaded: each pair in one interpreter (pandas looked for after each command),
    # each writing its upload into a directory of its own
    for preamble, pandas in ((AS_THE_COMMAND, False), (AS_THE_COMMAND + "import pandas\n", True)):
        commands = []
        for name in ("rows.json", "rows.jsonl"):
            (canned / f"{name}-{pandas}").mkdir()
            commands.append((canned / f"{name}-{pandas}", ["datasets", "upload", "7", str(canned / name), "--json"]))
        answers = run_in_one_interpreter(preamble, commands, canned / f"done-{pandas}.json")
        for (directory, _), (name, (code, out, child)) in zip(commands, zip(("rows.json", "rows.jsonl"), answers,
                                                                             strict=True), strict=True):
            assert code == 0 and child["pandas"] is pandas, (name, child)
            assert [s["path"] for s in child["sent"]] == ["datasets/get", "/v1/api/datasets/upload_rows"]
            assert json.loads(out) == [{"rows_added": 2}]
            sent[name, pandas] = (directory / "uploaded.arrow").read_bytes()
    assert len(set(sent.values())) == 1  # the same table, with or without pandas, from either file
    table = pa.ipc.open_file(pa.py_buffer(sent["rows.json", False])).read_all()
    assert table.to_pylist() == UPLOADED and table.equals(pa.Table.from_pylist(UPLOADED))


def test_pandas_is_declined_only_in_the_railyard_commands_process(canned: Path):
    """Run as a library (here `python -c`, an SDK user's process), the upload leaves pyarrow's pandas shim alone."""
    (canned / "rows.json").write_text(json.dumps(UPLOADED))
    out, child = run(canned, "datasets", "upload", "7", str(canned / "rows.json"), "--json")
    assert json.loads(out) == [{"rows_added": 2}] and child["pandas"] is True
