"""The registry keeps its sandboxed check's answer by (framework, sha256 of the bytes): the same bytes uploaded
again are not checked again (no worker, no onnxruntime session) and get the same schemas, or the same 400 with
nothing stored; other bytes, or the same bytes as another framework, are checked. The worker here is
`services.registry.artifacts.main` run in this process (what the sandbox runs), so the real inspection and
the real reading of its answer are what is cached."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from services.registry import artifacts, handlers
from services.registry.worker import WorkerEnd, answer_and_verdict
from shared import subjects
from shared.authz import Principal
from shared.errors import InvalidRequest
from shared.messages.registry import Conversion, UploadModel
from shared.settings import RegistrySettings
from tests.models import ccfraud_onnx, wide_onnx

USER = str(uuid.uuid4())
PRINCIPAL = Principal(subject=USER, kind="user", admin=False, client_id="test", username="alice", issued_at=0.0)


class Objects:
    """The artifacts bucket: staged uploads in, content-addressed copies out."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.copies: list[str] = []

    async def download_to(self, bucket: str, key: str, target: Path) -> tuple[str, int]:
        body = self.data[key]
        await asyncio.to_thread(target.write_bytes, body)
        return hashlib.sha256(body).hexdigest(), len(body)

    async def exists(self, bucket: str, key: str) -> bool:
        return key in self.data

    async def copy(self, bucket: str, source: str, key: str) -> None:
        self.copies.append(key)
        self.data[key] = self.data[source]

    async def delete(self, bucket: str, key: str) -> None:
        self.data.pop(key, None)


class Pool:
    def acquire(self):
        return self

    def transaction(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class Harness:
    def __init__(self, monkeypatch) -> None:
        self.objects, self.published, self.inserted = Objects(), [], []
        self.worker_runs: list[tuple[str, ...]] = []
        self.sessions = 0
        self.worker_end: WorkerEnd | None = None  # set: the worker ends so instead of running
        self.deps = handlers.RegistryDeps(pool=Pool(), objects=self.objects,  # type: ignore[arg-type]
                                          settings=RegistrySettings(),
                                          membership=lambda token: None)  # type: ignore[arg-type,return-value]

        async def member(lookup, principal, workspace_id) -> str:
            return "owner"

        async def insert_version(conn, **row: Any) -> int:
            self.inserted.append(row)
            return 7

        real_session = onnxruntime.InferenceSession

        def counted_session(*args, **kwargs):
            self.sessions += 1
            return real_session(*args, **kwargs)

        monkeypatch.setattr(handlers, "require_member", member)
        async def add_event(conn, subject: str, event) -> None:  # the outbox row, in the version's transaction
            self.published.append(subject)

        monkeypatch.setattr(handlers.store, "insert_version", insert_version)
        monkeypatch.setattr(handlers.store, "add_event", add_event)
        monkeypatch.setattr(handlers, "run_worker_verdict", self._worker)
        monkeypatch.setattr(onnxruntime, "InferenceSession", counted_session)

    async def _worker(self, settings, framework: str, workdir: Path, *args: str):
        """What the sandbox runs, in this process: `python -m services.registry.artifacts <args>`."""
        self.worker_runs.append(args)
        end = self.worker_end
        if end is None:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                artifacts.main(list(args))
            end = WorkerEnd(returncode=0, stdout=out.getvalue().encode(), stderr_tail="", limit_hit=None)
        return answer_and_verdict(settings, framework, end, stderr_allowed=True)

    async def upload(self, body: bytes, framework: str = "onnx"):
        key = f"staging/{USER}/{uuid.uuid4()}"
        self.objects.data[key] = body
        cmd = UploadModel(workspace_id=1, name="m", conversion=Conversion(framework=framework), staged_key=key,
                          file_name="m.onnx")
        try:
            return await handlers.upload_model(self.deps, PRINCIPAL, "token", cmd)
        finally:
            assert key not in self.objects.data, "the staged upload was not deleted"


@pytest.fixture
def harness(monkeypatch) -> Harness:
    return Harness(monkeypatch)


async def test_the_same_bytes_are_checked_once_and_get_the_same_schemas(harness):
    await harness.upload(ccfraud_onnx())
    assert len(harness.worker_runs) == 1 and harness.sessions == 1
    await harness.upload(ccfraud_onnx())
    assert len(harness.worker_runs) == 1 and harness.sessions == 1, "the same bytes were checked again"
    first, second = harness.inserted
    assert first["input_schema"] and first["output_schema"]
    assert (second["input_schema"], second["output_schema"]) == (first["input_schema"], first["output_schema"])
    assert second["sha"] == first["sha"] == hashlib.sha256(ccfraud_onnx()).hexdigest()
    assert second["status"] == "ready" and second["runtime"] == "onnx"
    assert harness.published == [subjects.EVENT_MODEL_UPLOADED] * 2


async def test_other_bytes_and_the_same_bytes_as_another_framework_are_checked(harness):
    await harness.upload(ccfraud_onnx())
    await harness.upload(wide_onnx())
    assert len(harness.worker_runs) == 2 and harness.sessions == 2
    assert harness.inserted[0]["input_schema"] != harness.inserted[1]["input_schema"]
    with pytest.raises(InvalidRequest, match="python model rejected"):
        await harness.upload(ccfraud_onnx(), "python")  # same bytes, another framework: its own check
    assert len(harness.worker_runs) == 3 and harness.sessions == 2


async def test_a_cached_rejection_is_the_same_400_and_stores_nothing(harness):
    garbage = b"\x00\x01garbage bytes"
    messages = []
    for _ in range(3):
        with pytest.raises(InvalidRequest) as raised:
            await harness.upload(garbage)
        messages.append((type(raised.value), raised.value.status, raised.value.code, raised.value.msg))
    assert len(harness.worker_runs) == 1, "a rejection was not kept"
    assert messages[0] == messages[1] == messages[2]
    assert messages[0][1:3] == (400, "invalid_request")
    assert messages[0][3] == "onnx model rejected: not an ONNX model (the file does not parse as an ONNX protobuf)"
    assert harness.inserted == [] and harness.objects.copies == [] and harness.published == []
    assert harness.objects.data == {}, "a rejected upload left objects behind"


async def test_what_the_bytes_did_not_decide_is_asked_again(harness, monkeypatch):
    """A limit hit (or a signal, or no answer) may come from the host's load at the time: not kept; nor the
    worker's own answer when it ran out of memory (RLIMIT_AS: MemoryError)."""
    harness.worker_end = WorkerEnd(returncode=-9, stdout=b"", stderr_tail="", limit_hit="wall_time")
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="did not finish within"):
            await harness.upload(ccfraud_onnx())
    harness.worker_end = None

    def out_of_memory(path: Path):
        raise MemoryError

    with monkeypatch.context() as patched:
        patched.setitem(artifacts.INSPECTORS, "onnx", out_of_memory)
        for _ in range(2):
            with pytest.raises(InvalidRequest, match="more memory than the registry allows"):
                await harness.upload(ccfraud_onnx())
    assert len(harness.worker_runs) == 4 and len(harness.deps.checked) == 0
    await harness.upload(ccfraud_onnx())
    await harness.upload(ccfraud_onnx())
    assert len(harness.worker_runs) == 5 and len(harness.inserted) == 2


def test_the_cache_is_bounded_least_recently_used_first_and_hands_out_copies():
    cache = handlers.CheckCache(max_entries=2, max_chars=100)
    cache.put("onnx", "a", {"ok": True, "input_schema": "x" * 10})
    cache.put("onnx", "b", {"ok": True, "input_schema": "y" * 10})
    assert cache.get("onnx", "a") is not None  # a is now the most recently used
    cache.put("onnx", "c", {"ok": True, "input_schema": "z" * 10})
    assert cache.get("onnx", "b") is None and cache.get("onnx", "a") is not None and len(cache) == 2
    cache.put("onnx", "d", {"ok": False, "error": "e" * 95})  # 10 + 10 + 95 chars > 100: the oldest two go
    assert len(cache) == 1 and cache.get("onnx", "d") is not None
    cache.put("onnx", "huge", {"ok": True, "input_schema": "h" * 101})  # larger than the whole cache: not kept
    assert cache.get("onnx", "huge") is None and cache.get("onnx", "d") is not None
    got = cache.get("onnx", "d")
    got["error"] = "changed"
    assert cache.get("onnx", "d")["error"] == "e" * 95
    assert cache.get("python", "d") is None  # the framework is part of the key
