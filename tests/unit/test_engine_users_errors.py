"""services/engine/runtimes.users_code_failed: a request's error when the user's code raised names the exception
type and what it says (one line, bounded; an exception whose __str__ raises is still named), and the traceback it
writes for the replica's stderr excerpt starts at the user's code, without the platform's frames that called it
(tests/integration/test_python_step_error_words.py runs it through the gateway and the sandboxed worker)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from services.engine.runtimes import PythonStepRuntime, users_code_failed
from shared.errors import InvalidRequest


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


SAID = {
    "a sentence": (ValueError("row 3: 'task' is not JSON"), "it raised ValueError: row 3: 'task' is not JSON"),
    "lines and spaces on one line": (KeyError("a\n  b"), "it raised KeyError: 'a\\n b'"),
    "several lines": (ValueError("first\n\tsecond  third"), "it raised ValueError: first second third"),
    "nothing said": (ValueError(), "it raised ValueError"),
    "an unprintable exception": (Unprintable(), "it raised Unprintable"),
    "a long text": (ValueError("z" * 250), f"it raised ValueError: {'z' * 200}... (250 characters)"),
    "megabytes": (ValueError("w" * 5_000_000), f"it raised ValueError: {'w' * 200}... (5000000 characters)"),
}


@pytest.mark.parametrize("case", SAID.values(), ids=SAID.keys())
def test_the_error_names_the_type_and_what_the_exception_says(case):
    exc, wanted = case
    error = users_code_failed("the model failed", exc)
    assert isinstance(error, InvalidRequest) and error.code == "invalid_request"
    assert error.msg == f"the model failed: {wanted}"


def test_the_traceback_starts_at_the_users_code(tmp_path, capsys):
    script = tmp_path / "step.py"
    script.write_text("def wallaroo_json(data):\n    raise ValueError('refused ' + str(len(data)))\n")
    step = PythonStepRuntime(script)
    step.load()
    with pytest.raises(InvalidRequest) as raised:
        step.predict(pa.table({"x": [1, 2]}))
    assert raised.value.msg == "the Python step failed: it raised ValueError: refused 2"
    written = capsys.readouterr().err
    assert "in wallaroo_json" in written and written.rstrip().endswith("ValueError: refused 2"), written
    assert "runtimes.py" not in written and "self.entry" not in written, written  # the platform's frame

    script.write_text("def wallaroo_json(data)\n")  # a syntax error: no frame of the user's, none of ours
    with pytest.raises(InvalidRequest) as failed:
        PythonStepRuntime(script).load()
    assert failed.value.msg.startswith("the Python step failed to load: it raised SyntaxError: ")
    written = capsys.readouterr().err
    assert "SyntaxError" in written and "runtimes.py" not in written, written


def test_the_platforms_frames_are_left_out_of_a_symlinked_checkout_too(tmp_path):
    """A frame's file is the path the module was imported by: through a symlink to the checkout (a deploy's
    /app -> release folder) it is not the resolved path of runtimes.py."""
    import subprocess
    import sys
    from pathlib import Path

    link = tmp_path / "checkout"
    link.symlink_to(Path(__file__).resolve().parents[2], target_is_directory=True)
    script = tmp_path / "step.py"
    script.write_text("def wallaroo_json(data):\n    raise ValueError('refused')\n")
    run = subprocess.run([sys.executable, "-c", (
        f"import sys; sys.path.insert(0, {str(link)!r}); import pyarrow as pa; "
        "from services.engine import runtimes; print(runtimes.__file__); "
        f"step = runtimes.PythonStepRuntime(__import__('pathlib').Path({str(script)!r})); step.load()\n"
        "try: step.predict(pa.table({'x': [1]}))\nexcept Exception as exc: print(exc)")],
        capture_output=True, text=True, timeout=60, check=True)
    imported, said = run.stdout.splitlines()
    assert imported == str(link / "services" / "engine" / "runtimes.py")  # through the link
    assert said == "the Python step failed: it raised ValueError: refused", run
    assert "runtimes.py" not in run.stderr and "in wallaroo_json" in run.stderr, run.stderr
