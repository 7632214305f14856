"""`railyard infer` with JSON rows (a file or stdin) refuses, before anything is sent, what the inference API would
refuse with a 400: a missing or unreadable file, text that is not JSON, JSON that is not pandas-records rows, and
rows the API cannot read (different keys, nulls, mixed types, ragged tensors). Exit code 2, one line naming the
input, the record and the rule, and still without pandas. Each command runs the real CLI in a fresh interpreter;
`_client` (signing in, then every request) only records that it was reached; the rule table's refusals, and a test's
commands that read no stdin, run one after another in one fresh interpreter (run_in_one_interpreter), each still
checked for its exit code, its one error line, nothing reached and no pandas after it. The client's rules are the API's
(`shared.arrow_codec.records_json_to_table`, which the gateway's `read_records` gives the same verdicts): the last
test holds them to it on the same JSON texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from railyard_client.data import inference_records
from railyard_client.errors import InvalidInput

from services.gateway.records_parse import read_records
from shared.arrow_codec import records_json_to_table
from shared.errors import InvalidRequest

STUB = r'''
import json, sys
from railyard_client import cli

reached = []


class Pipeline:
    def infer(self, rows):
        return [{"time": 1, "in": row, "out": {"y": [0.5]}, "check_failures": [], "metadata": {}} for row in rows]


class Workspace:
    def pipeline(self, name):
        return Pipeline()


def client(workspace=None):
    reached.append(True)
    return type("Client", (), {"current_workspace": lambda self: Workspace()})()


cli._client = client
'''
CHILD = STUB + r'''
code = cli.main(sys.argv[1:])
print(json.dumps({"reached": bool(reached), "pandas": "pandas" in sys.modules}), file=sys.stderr)
sys.exit(code)
'''
# Several commands, one after another in this one interpreter, each in its own folder: [[folder, args], ...] in the
# file argv[1], [[exit code, stderr, {reached, pandas}], ...] written to argv[2]. pandas is looked for after each
# command: one that loads it fails, and so does every command after it.
BATCH = STUB + r'''
import contextlib, io, os, traceback
done = []
for folder, args in json.loads(open(sys.argv[1]).read()):
    os.chdir(folder)
    reached.clear()
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(args)
        except BaseException:  # SystemExit included: main returns its code
            traceback.print_exc()
            code = -1
    done.append([code, err.getvalue(), {"reached": bool(reached), "pandas": "pandas" in sys.modules}])
open(sys.argv[2], "w").write(json.dumps(done))
'''

GOOD = [{"tensor": [0.5, -1.25], "id": 1, "tag": "a"}, {"tensor": [2.0, 0], "id": 2, "tag": "b"}]


def run(cwd: Path, *args: str, stdin: str | None = None) -> tuple[int, str, dict]:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    return done.returncode, "\n".join(lines[:-1]), json.loads(lines[-1])


def run_in_one_interpreter(commands: list[tuple[Path, list[str]]], folder: Path) -> list[tuple[int, str, dict]]:
    """run's answers for several commands (no stdin) run one after another in one fresh interpreter."""
    (folder / "commands.json").write_text(json.dumps([[str(cwd), args] for cwd, args in commands]))
    done = subprocess.run([sys.executable, "-c", BATCH, str(folder / "commands.json"), str(folder / "done.json")],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answers = json.loads((folder / "done.json").read_text())
    assert len(answers) == len(commands), answers
    return [(code, err.strip(), child) for code, err, child in answers]


def refused(cwd: Path, *args: str, stdin: str | None = None) -> str:
    """The one error line of a command refused before it signs in or sends anything (exit 2, no pandas)."""
    return refused_as(run(cwd, *args, stdin=stdin))


def refused_as(answer: tuple[int, str, dict]) -> str:
    code, err, child = answer
    assert (code, child["reached"]) == (2, False), (code, err, child)
    assert child["pandas"] is False
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("railyard: error: "), err
    return err


def test_good_rows_are_sent(tmp_path: Path):
    (tmp_path / "rows.json").write_text(json.dumps(GOOD))
    (tmp_path / "rows.ndjson").write_text("\n".join(json.dumps(row) for row in GOOD) + "\n")  # JSON lines
    (code, err, child), lines = run_in_one_interpreter([(tmp_path, ["infer", "fraud", "rows.json", "--json"]),
                                                        (tmp_path, ["infer", "fraud", "rows.ndjson", "--json"])],
                                                       tmp_path)
    assert (code, child) == (0, {"reached": True, "pandas": False}), err
    assert lines[0] == 0, lines


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_rows_in_any_encoding_the_api_reads_are_sent(tmp_path: Path, encoding: str):
    """JSON's encodings as the API's reader finds them (Python's rule): a UTF-8 file with a byte order mark (Windows
    editors) or UTF-16 (Windows PowerShell 5's `>`) was 'not JSON' for the CLI, which decoded UTF-8 alone, and is
    read by the API."""
    raw = json.dumps(GOOD).encode(encoding)
    assert records_json_to_table(raw).num_rows == len(GOOD)  # the API takes it
    assert inference_records(raw) == GOOD
    (tmp_path / "rows.json").write_bytes(raw)
    code, err, child = run(tmp_path, "infer", "fraud", "rows.json", "--json")
    assert (code, child) == (0, {"reached": True, "pandas": False}), err
    one = json.dumps({"columns": ["a"], "data": [[1]]}).encode(encoding)  # a top-level object's shape is still told
    with pytest.raises(InvalidInput, match="split orientation"):
        inference_records(one)


def test_bytes_that_are_not_text_are_refused_as_the_api_refuses_them(tmp_path: Path):
    """A file saved as Latin-1 / cp1252 (Windows editors): the API refuses its body ('body is not valid JSON'); the
    client replaced the bytes with U+FFFD and sent the rows, so the model was given other text than the file's
    ('caf\ufffd') and `datasets upload` stored it."""
    from railyard_client.data import read_table

    raw = json.dumps([{"name": "café", "x": 1.0}], ensure_ascii=False).encode("cp1252")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        records_json_to_table(raw)  # the API
    with pytest.raises(InvalidInput, match=r"^rows\.json is not text in UTF-8 \(or UTF-16/32\): byte 14 \(b'\\xe9'\)"):
        inference_records(raw, "rows.json")
    (tmp_path / "rows.json").write_bytes(raw)
    assert "rows.json is not text in UTF-8" in refused(tmp_path, "infer", "fraud", "rows.json")
    with pytest.raises(InvalidInput, match="is not text in UTF-8"):
        read_table(tmp_path / "rows.json")  # the SDK's and `datasets upload`'s path
    assert inference_records(raw.decode("cp1252").encode()) == [{"name": "café", "x": 1.0}]  # as UTF-8: taken


def test_a_missing_or_unreadable_file_is_refused_by_name(tmp_path: Path):
    (tmp_path / "folder.json").mkdir()
    names = {"missing.json": "'missing.json' does not exist", "folder.json": "'folder.json' is a directory"}
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "secret.json").write_text(json.dumps(GOOD))
        (tmp_path / "secret.json").chmod(0)
        names["secret.json"] = "'secret.json' is not readable"
    answers = run_in_one_interpreter([(tmp_path, ["infer", "fraud", name]) for name in names], tmp_path)
    for message, answer in zip(names.values(), answers, strict=True):
        assert message in refused_as(answer)


REFUSED = [
    ('[{"tensor": [1.0, 2.0]},\n {"tensor": [3.0', "rows.json is not JSON: Expecting"),
    ('{"tensor": [1.0]}\n{"tensor": [2.0]\n', "rows.json is neither JSON nor JSON lines: line 2:"),
    # no rows: the API's no-rows words (shared.arrow_codec.NO_ROWS); they were "expected pandas-records JSON: a
    # non-empty list of row objects, found nothing"
    ("", "rows.json: the request holds no rows; send at least one (it is empty)"),
    ("[]", "rows.json: the request holds no rows; send at least one (an empty list of records)"),
    (" [ ]\n", "rows.json: the request holds no rows; send at least one (an empty list of records)"),
    ("null", "found a null"),
    ("[1, 2]", "found a list holding a number"),
    ('"rows"', "found a string"),
    ('[{"tensor": [1.0, 2.0]}, {"tensor": [3.0]}]', "column 'tensor': record 1's tensor has shape [1], record 0's"
                                                    " [2]"),
    ('[{"t": [[1, 2], [3]]}]', "column 't': record 0's tensor is ragged"),
    ('[{"a": 1, "b": 2}, {"a": 3}]', "record 1 has different columns than record 0 (missing ['b'])"),
    ('[{"a": 1}, {"a": 2, "c": 3}]', "record 1 has different columns than record 0 (extra ['c'])"),
    ('[{"a": 1.5}, {"a": null}]', "column 'a': record 1 holds a null"),
    ('[{"t": [1.0, null]}]', "column 't': record 0 holds a null"),
    ('[{"a": 1}, {"a": "x"}]', "column 'a' mixes data types: numbers (first in record 0), strings (first in"
                               " record 1)"),
    ('[{"t": [true, 1.0]}]', "column 't' mixes data types"),
    ('[{"t": [1.0]}, {"t": 2.0}]', "column 't' mixes tensors and scalars: record 0 holds a list, record 1 a number"),
    ('[{"u": 1.0, "t": {"x": 1}}]', "column 't': record 0 holds a JSON object"),
    # a one-row list whose values are all objects is still a list of rows, not a DataFrame's columns orientation
    ('[{"task": {"text": "awful"}}]', "column 'task': record 0 holds a JSON object"),
    ('[{"t": []}]', "column 't': empty tensors"),
    ('[{"t": 9223372036854775808}]', "column 't': record 0 holds an integer outside the 64-bit signed range"),
    ('{"inputs": [{"name": "tensor", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}',
     "rows.json is an Open Inference Protocol v2 body"),
    ('{"tensor": {"0": [1.0, 2.0], "1": [3.0, 4.0]}}', "to_json(orient='records')"),
    ('{"columns": ["a"], "index": [0], "data": [[1.0]]}', "to_json(orient='records')"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, tuple[int, str, dict]]:
    """Each of REFUSED's texts in its own folder's rows.json, `infer fraud rows.json --json` on each, the commands
    run one after another in one fresh interpreter (a fresh one each took ~0.3 s of CPU, 26 of them)."""
    root = tmp_path_factory.mktemp("refused")
    commands = []
    for i, (text, _) in enumerate(REFUSED):
        (root / str(i)).mkdir()
        (root / str(i) / "rows.json").write_text(text)
        commands.append((root / str(i), ["infer", "fraud", "rows.json", "--json"]))
    return dict(zip([text for text, _ in REFUSED], run_in_one_interpreter(commands, root), strict=True))


@pytest.mark.parametrize("text, message", REFUSED)
def test_rows_the_api_would_refuse_are_refused_before_sending(refusals, text: str, message: str):
    err = refused_as(refusals[text])
    assert message in err, err


def test_a_table_file_named_json_is_named_for_what_it_is(tmp_path: Path):
    (tmp_path / "rows.json").write_bytes(b"PAR1\x15\x04" + bytes(40))
    assert "rows.json is Parquet, not JSON" in refused(tmp_path, "infer", "fraud", "rows.json")


def test_stdin_rows_are_checked_alike(tmp_path: Path):
    err = refused(tmp_path, "infer", "fraud", stdin='[{"tensor": [1.0, 2.0]}, {"tensor": [3.0]}]')
    assert "stdin: column 'tensor': record 1's tensor has shape [1]" in err
    err = refused(tmp_path, "infer", "fraud", stdin="[]\n")
    assert err == "railyard: error: stdin: the request holds no rows; send at least one (an empty list of records)"
    assert "stdin is not JSON" in refused(tmp_path, "infer", "fraud", "--format", "json", stdin="[{")


def test_an_output_file_it_cannot_write_is_refused_before_sending(tmp_path: Path):
    (tmp_path / "rows.json").write_text(json.dumps(GOOD))
    csv, parquet, written, logs = run_in_one_interpreter([
        (tmp_path, ["infer", "fraud", "rows.json", "-o", "out.csv"]),
        (tmp_path, ["infer", "fraud", "rows.json", "-o", "out.parquet"]),
        (tmp_path, ["infer", "fraud", "rows.json", "-o", "out.json"]),
        (tmp_path, ["pipelines", "logs", "fraud", "-o", "logs.txt"])], tmp_path)
    assert "out.csv: unknown output type .csv" in refused_as(csv)
    # the API's JSON records are not a table: written as JSON into out.parquet before
    assert "write them to a .json file, not out.parquet" in refused_as(parquet)
    assert written[0] == 0, written
    assert json.loads((tmp_path / "out.json").read_text())[1]["in"] == GOOD[1]
    assert "unknown output type" in refused_as(logs)


CASES = [
    GOOD,
    [{"t": [[1, 2], [3, 4]]}, {"t": [[5, 6.5], [7, 8]]}],
    [{"flag": True, "name": "x", "n": 2**63 - 1}],
    [{"t": [2**63, 1.5]}],  # an int past int64 among floats: read as floats
    [{"t": [1.0, 2.0]}, {"t": [3.0]}],
    [{"t": [[1, 2], [3]]}],
    [{"t": [1, [2]]}],
    [{"a": 1, "b": 2}, {"a": 3}],
    [{"a": 1}, {"a": 2, "c": 3}],
    [{"a": 1.5}, {"a": None}],
    [{"t": [1.0, None]}],
    [{"a": 1}, {"a": "x"}],
    [{"t": [True, 1.0]}],
    [{"t": [1.0]}, {"t": 2.0}],
    [{"t": {"x": 1}}],
    [{"t": []}],
    [{"t": 2**63}],
    [{"t": 1}, {"t": -(2**63) - 1}],
    [{"t": 10**400, "u": 1.0}],
    # past 64 bits the API's JSON reader reads an integer as a float: taken there, so taken here
    [{"t": 2**64}],
    [{"t": -(2**63) - 1}],
    [{"t": [1, 10**26]}],
    [{"t": 2**64 - 1}],  # a uint64 stays an integer: out of int64, refused by both
    [{"t": float("nan"), "u": 2**64}],  # NaN: Python's reader there, integers whole (u refused by both)
    [{"t": 1e308 * 10, "u": 2**64}],  # Infinity: the same
    [{"t": [float("nan"), 10**400]}],  # an integer past a float's range beside a NaN, which min() and max() skipped
    # a lone UTF-16 surrogate (json.dumps writes the \\ud800 escape): the API refuses it as not valid JSON; the CLI
    # took it and the SDK could not write it ('unexpected UnicodeEncodeError' after signing in)
    [{"text": "a\ud800b", "x": 1.0}],
    [{"x": 1.0, "tags": ["ok", "a"]}, {"x": 2.0, "tags": ["ok", "\udc00"]}],
    [{"\udfff": 1}],
    [{"text": "\ud83d\ude00", "x": 1.0}],  # a pair (one emoji): taken by both
]


@pytest.mark.parametrize("rows", CASES)
def test_the_client_refuses_what_the_api_refuses(rows):
    """The same verdict as the API's reader on each case's JSON text (a drift between the two would refuse good rows
    here or let bad ones reach the server). Both read the text as they do: the API with its own JSON reader (orjson,
    which takes an integer past 64 bits for a float), the CLI from a file's bytes; comparing Python objects hid
    that the CLI refused such rows, which the API takes."""
    raw = json.dumps(rows).encode()
    verdicts = []
    for server_read in (records_json_to_table, read_records):  # the reader's own entry, and the gateway's
        try:
            server_read(raw)
            verdicts.append(None)
        except InvalidRequest as exc:
            verdicts.append(str(exc))
    try:
        inference_records(raw)
        client = None
    except InvalidInput as exc:
        client = str(exc)
    assert (verdicts[0] is None) == (verdicts[1] is None) == (client is None), (verdicts, client)


def test_the_checks_do_not_change_the_rows():
    raw = json.dumps(GOOD).encode()
    assert inference_records(raw) == GOOD


def test_json_rows_are_sent_as_the_api_reads_them_nan_included():
    """The SDK sends JSON rows as the API reads them, NaN and Infinity included (the API takes them: a model that
    takes missing values as NaN gets them, an ONNX model answers its typed 400). httpx's json= refuses them
    (allow_nan=False): `railyard infer` on such a file ended with 'unexpected ValueError' after signing in, and
    Pipeline.infer raised a ValueError. Rows holding an integer past 64 bits go as the CLI checked them."""
    import httpx
    from railyard_client.pipelines import infer_at

    sent = []

    class Session:
        def send(self, method, path, **kwargs):
            request = httpx.Request(method, f"http://gateway{path}", content=kwargs.get("content"),
                                    json=kwargs.get("json"), headers=kwargs["headers"])
            sent.append(request)
            return httpx.Response(200, json=[{"out": {}}])

    infer_at(Session(), "d", "p", inference_records(b'[{"x": NaN, "y": [1.5, Infinity]}]'))
    infer_at(Session(), "d", "p", inference_records(b'[{"big": 18446744073709551616}]'))  # (no NaN in its body)
    assert all(request.headers["content-type"] == "application/json; format=pandas-records" for request in sent)
    table = records_json_to_table(sent[0].content)
    assert str(table.column("x")[0]) == "nan" and table.column("y").to_pylist() == [[1.5, float("inf")]]
    assert records_json_to_table(sent[1].content).column("big").to_pylist() == [float(2**64)]


def test_a_lone_surrogate_is_refused_before_sending_with_its_record(tmp_path: Path):
    """Before anything is sent, with where it is (it ended with 'unexpected UnicodeEncodeError' after signing in);
    the SDK given such rows itself sends them escaped, and the API answers its typed 400."""
    import httpx
    from railyard_client.data import read_table
    from railyard_client.pipelines import infer_at

    with pytest.raises(InvalidInput, match=r"column 'tags': record 1 holds a string with a lone UTF-16 surrogate"):
        inference_records(json.dumps([{"tags": ["a", "b"]}, {"tags": ["b", "\ud800"]}]).encode())
    sent = []

    class Session:
        def send(self, method, path, **kwargs):
            sent.append(httpx.Request(method, f"http://gateway{path}", content=kwargs.get("content"),
                                      json=kwargs.get("json"), headers=kwargs["headers"]))
            return httpx.Response(200, json=[{"out": {}}])

    infer_at(Session(), "d", "p", [{"text": "a\ud800b"}])
    (tmp_path / "lone.json").write_text('[{"text": "a\\ud800b", "x": 1.0}]')
    with pytest.raises(InvalidInput, match=r"lone\.json: column 'text': record 0 holds a string with a lone"):
        read_table(tmp_path / "lone.json")  # the SDK's file path (Arrow): UnicodeEncodeError from Arrow before
    with pytest.raises(InvalidRequest, match="lone UTF-16 surrogate"):
        records_json_to_table(sent[0].content)


def test_a_path_that_is_no_regular_file_is_refused_saying_so(tmp_path):
    """`railyard infer fraud /dev/null` said "no such file: /dev/null" (the s34 walk-through): exit 2 before signing
    in, saying what it is and that stdin takes a stream (tests/unit/test_client_data_not_regular_file.py)."""
    assert "not a regular file: /dev/null (a device)" in refused(tmp_path, "infer", "fraud", "/dev/null")
