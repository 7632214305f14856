"""The registry's reading of its sandboxed worker: what the user's code could have printed is bounded, and a
worker that ends without an answer gets a message Railyard wrote."""

from __future__ import annotations

import json
import signal

from services.registry.worker import MAX_ERROR_CHARS, WorkerEnd, answer
from shared.settings import RegistrySettings

SETTINGS = RegistrySettings(worker_timeout=30, worker_memory_mb=1024, worker_file_size_mb=64, worker_processes=32)


def _end(stdout: bytes = b"", *, code: int = 0, stderr: str = "", limit: str | None = None) -> WorkerEnd:
    return WorkerEnd(returncode=code, stdout=stdout, stderr_tail=stderr, limit_hit=limit)


def test_an_answer_is_taken_from_the_last_line():
    end = _end(b"noise\n" + json.dumps({"ok": True, "runtime": "onnx"}).encode() + b"\n")
    assert answer(SETTINGS, "sklearn", end, stderr_allowed=True) == {"ok": True, "runtime": "onnx"}


def test_an_error_the_worker_printed_is_one_bounded_line():
    forged = json.dumps({"ok": False, "error": "x\n\x1b[2J" + "y" * 100_000}).encode()
    result = answer(SETTINGS, "sklearn", _end(forged), stderr_allowed=True)
    assert not result["ok"] and len(result["error"]) <= MAX_ERROR_CHARS and "\n" not in result["error"]
    assert "\x1b" not in result["error"]


def test_a_limit_is_named_with_its_setting_and_stderr_only_when_allowed():
    end = _end(code=128 + signal.SIGKILL, stderr="Traceback ... " + "z" * 5000, limit="memory")
    shown = answer(SETTINGS, "sklearn", end, stderr_allowed=True)["error"]
    assert shown.startswith("the uploaded sklearn pickle could not be checked or converted: it needed more memory"
                            " than the registry allows (1024 MiB); see docs/security.md#conversions")
    assert "zzz" in shown and len(shown) < 600
    hidden = answer(SETTINGS, "sklearn", end, stderr_allowed=False)["error"]
    assert "zzz" not in hidden


def test_no_answer_at_all_is_said_so():
    for end in (_end(b""), _end(b"{not json"), _end(json.dumps({"ok": "yes"}).encode()), _end(code=-9)):
        result = answer(SETTINGS, "xgboost", end, stderr_allowed=False)
        assert result["ok"] is False and result["error"].startswith("the uploaded XGBoost model could not be")


def test_wall_time_and_processes():
    assert "did not finish within 30 s" in answer(SETTINGS, "onnx", _end(limit="wall_time"),
                                                  stderr_allowed=False)["error"]
    assert "(32)" in answer(SETTINGS, "onnx", _end(limit="processes"), stderr_allowed=False)["error"]
