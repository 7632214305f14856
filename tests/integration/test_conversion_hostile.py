"""Hostile uploads, as a non-admin user would send them through the public API: pickles whose `__reduce__`
reads the platform's secrets, reaches for its servers or exhausts the machine while the registry converts them,
and archives whose members escape the model's folder.

Each conversion must end in `error` with a message Railyard wrote, nothing secret anywhere in what the user
gets back, nothing of the pickle's code left running, and the registry serving the next upload at once.
The pickles forge the worker's answer (`{"ok": false, "error": <what they found>}` on stdout) as well as raising,
so whatever they manage to read or reach would come back to the user if the sandbox let them.
"""

from __future__ import annotations

import io
import pickle
import stat
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import Account
from tests.integration.test_registry import api, artifact_keys, byop_zip, model_id_of, upload
from tests.models import ccfraud_onnx, ccfraud_pickle

pytestmark = pytest.mark.integration


class _Reduce:
    """Unpickles by calling `exec(code)`: the user's code runs inside the conversion."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def hostile_pickle(code: str) -> bytes:
    return pickle.dumps(_Reduce(code))


# What every payload ends with: report the findings every way a conversion's output could reach the user.
REPORT = """
import json as _json, os as _os, sys as _sys
_text = " ".join(found)
_sys.stderr.write(_text[-4000:] + "\\n")
_sys.stderr.flush()
if MODE == "raise":
    raise ValueError(_text)
_sys.stdout.write(_json.dumps({"ok": False, "error": _text}) + "\\n")
_sys.stdout.flush()
_os._exit(0 if MODE == "forge" else 3)
"""

# Who am I, and whose /proc is this: a sandboxed conversion has its own pid namespace (pid 1 is not the host's).
IDENTITY = """
import os
found = []
try:
    found.append("PID1=" + open("/proc/1/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace"))
except Exception as exc:
    found.append("PID1:" + type(exc).__name__)
"""

READERS = {
    "environment": """
found.append(" ".join(f"{k}={v}" for k, v in os.environ.items()))
""",
    "proc-1-environ": """
try:
    found.append(open("/proc/1/environ", "rb").read().replace(b"\\0", b" ").decode(errors="replace"))
except Exception as exc:
    found.append("proc1:" + type(exc).__name__)
""",
    "proc-parent-environ": """
for pid in {os.getppid(), os.getppid() - 1, os.getppid() - 2}:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\\0")
    except Exception as exc:
        found.append(f"ppid {pid}:" + type(exc).__name__)
        continue
    # the secret-looking values first, so that even a short excerpt of an error holds them
    found[:0] = [e.split("=", 1)[1] for e in raw if any(w in e.split("=")[0] for w in ("PASS", "SECRET", "DSN", "KEY"))]
    found.extend(raw)
""",
    "every-proc-environ": """
import glob
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        raw = open(path, "rb").read().decode(errors="replace").split("\\0")
    except Exception:
        continue
    found[:0] = [e.split("=", 1)[1] for e in raw if any(w in e.split("=")[0] for w in ("PASS", "SECRET", "DSN", "KEY"))]
""",
    "secrets-json": """
try:
    found.insert(0, " ".join(json.load(open(DATA + "/secrets.json")).values()))
except Exception as exc:
    found.append("secrets:" + type(exc).__name__)
""",
    "data-directory": """
for root, dirs, files in os.walk(DATA):
    dirs[:] = [d for d in dirs if d not in ("postgres", "nats", "s3")]
    found.append("LISTED " + root + ": " + " ".join(files))
    for name in files:
        try:
            found.insert(0, open(os.path.join(root, name), errors="replace").read(2000))
        except Exception:
            pass
""",
}


def _payload(stack, body: str, mode: str) -> bytes:
    head = f"import json\nMODE = {mode!r}\nDATA = {str(stack.data_dir)!r}\n"
    return hostile_pickle(head + IDENTITY + body + REPORT)


def _secret_values(stack) -> set[str]:
    """Every credential of the stack: its secrets file (admin password, client secret, S3 keys, database
    passwords, the registry's key) and the DSNs built from them."""
    values = {v for v in stack.secrets().values() if isinstance(v, str) and len(v) >= 12}
    assert len(values) >= 8, values
    return values


def _converted(stack, account: Account, name: str, content: bytes, framework: str = "sklearn",
               timeout: float = 120) -> tuple[dict, str]:
    """Upload, wait until the conversion ends; the version and every response's raw text."""
    response = upload(stack, account, name, content, framework)
    texts = [response.text]
    model_id = model_id_of(response)
    deadline = time.monotonic() + timeout
    while True:
        listed = api(stack, account, "models/list_versions", {"models_pk_id": model_id})
        texts.append(listed.text)
        assert listed.status_code == 200, listed.text
        version = listed.json()[0]
        if version["status"] != "converting":
            break
        assert time.monotonic() < deadline, f"conversion still running after {timeout}s"
        time.sleep(0.1)
    texts.append(api(stack, account, "models/get_by_id", {"id": model_id}).text)
    return version, "\n".join(texts)


def _assert_leaks_nothing(stack, text: str) -> None:
    for value in _secret_values(stack):
        assert value not in text, "a secret of the stack reached the user"
    assert "RAILYARD_" not in text
    assert "s3-identities" not in text and "secrets.json" not in text
    host_pid1 = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    assert f"PID1={host_pid1}" not in text, "the conversion saw the host's processes (no pid namespace of its own)"


def _assert_registry_serves(stack, account: Account) -> None:
    response = upload(stack, account, f"after-{uuid.uuid4().hex[:6]}", ccfraud_onnx())
    model_id = model_id_of(response)
    version = api(stack, account, "models/list_versions", {"models_pk_id": model_id}).json()[0]
    assert version["status"] == "ready"


def _assert_railyard_wrote_it(version: dict) -> None:
    assert version["status"] == "error" and version["sha"] is None, version
    assert version["error"].startswith(("the uploaded ", "not a fitted scikit-learn model")), version
    assert len(version["error"]) <= 800


@pytest.mark.parametrize("mode", ["raise", "forge", "crash"])
@pytest.mark.parametrize("target", sorted(READERS))
def test_conversion_cannot_read_platform_secrets(stack, alice, target, mode):
    version, text = _converted(stack, alice, f"read-{uuid.uuid4().hex[:6]}",
                               _payload(stack, READERS[target], mode))
    assert version["status"] == "error" and version["sha"] is None, version
    _assert_leaks_nothing(stack, text)
    if mode == "raise":
        # Railyard's sentence, not the text the pickle raised
        assert version["error"].startswith("the uploaded sklearn pickle could not be loaded: Python could not "
                                           "unpickle it (ValueError)"), version["error"]
    _assert_registry_serves(stack, alice)


def test_an_xgboost_pickle_is_converted_in_the_sandbox_too(stack, alice):
    body = READERS["proc-parent-environ"] + READERS["secrets-json"]
    version, text = _converted(stack, alice, f"xgb-{uuid.uuid4().hex[:6]}", _payload(stack, body, "raise"), "xgboost")
    _assert_leaks_nothing(stack, text)
    assert version["status"] == "error" and version["error"].startswith(
        "the uploaded XGBoost pickle could not be loaded: Python could not unpickle it (ValueError)"), version
    _assert_registry_serves(stack, alice)


def _platform_ports(stack) -> dict[str, int]:
    env = stack.env
    ports = {name.lower(): int(env[f"RAILYARD_STACK__{name}"])
             for name in ("NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "S3_PORT", "WEED_MASTER_PORT",
                          "WEED_VOLUME_PORT", "WEED_FILER_PORT")}
    ports |= {f"{name}_grpc": port + 10000 for name, port in list(ports.items())
              if name in ("s3_port", "weed_master_port", "weed_volume_port", "weed_filer_port")}
    ports["gateway"] = int(env["RAILYARD_GATEWAY__PORT"])
    return ports


def test_conversion_reaches_no_platform_port(stack, alice):
    ports = _platform_ports(stack)
    body = f"""
import socket
for name, port in {ports!r}.items():
    for host in ("127.0.0.1", "localhost", socket.gethostname()):
        try:
            socket.create_connection((host, port), timeout=2).close()
            found.insert(0, f"REACHED {{name}} {{host}}:{{port}}")
        except Exception as exc:
            found.append(f"blocked {{name}} {{host}}:{{port}} {{type(exc).__name__}}")
"""
    version, text = _converted(stack, alice, f"net-{uuid.uuid4().hex[:6]}", _payload(stack, body, "forge"))
    assert version["status"] == "error"
    assert "REACHED" not in text, version["error"]
    _assert_leaks_nothing(stack, text)
    _assert_registry_serves(stack, alice)


def _marker() -> str:
    return f"rybomb{uuid.uuid4().hex[:8]}"  # a process name (comm, at most 15 characters)


def _processes_named(marker: str) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == marker:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


NAME_SELF = """
import ctypes
ctypes.CDLL(None).prctl(15, MARKER.encode(), 0, 0, 0)  # PR_SET_NAME
"""


def _assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 10
    while _processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_named(marker) == [], "processes the pickle started outlived its conversion"


def test_fork_bomb_ends_with_the_conversion(stack, alice):
    marker = _marker()
    # bounded (3000 processes of a minute each) so that even an unsandboxed run cannot take the machine down
    body = f"""
import time
MARKER = {marker!r}
{NAME_SELF}
started = 0
for _ in range(3000):
    try:
        pid = os.fork()
    except OSError as exc:
        found.append("fork refused: " + type(exc).__name__)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    started += 1
found.append(f"started {{started}}")
"""
    version, text = _converted(stack, alice, f"bomb-{uuid.uuid4().hex[:6]}", _payload(stack, body, "raise"))
    _assert_railyard_wrote_it(version)
    _assert_nothing_left(marker)
    _assert_leaks_nothing(stack, text)
    _assert_registry_serves(stack, alice)
    # and a normal pickle converts right after
    version, _ = _converted(stack, alice, f"fine-{uuid.uuid4().hex[:6]}", ccfraud_pickle())
    assert version["status"] == "ready" and version["runtime"] == "onnx", version


def test_allocating_8_gb_fails_on_the_memory_limit(stack, alice):
    body = """
chunks = []
for _ in range(32):
    chunks.append(b"\\1" * (256 << 20))  # written, not only reserved
found.append("allocated 8 GB")
"""
    version, text = _converted(stack, alice, f"mem-{uuid.uuid4().hex[:6]}", _payload(stack, body, "forge"))
    _assert_railyard_wrote_it(version)
    assert "more memory than the registry allows" in version["error"], version["error"]
    _assert_leaks_nothing(stack, text)
    _assert_registry_serves(stack, alice)


def test_spinning_forever_is_stopped_with_everything_it_started(stack, alice):
    marker = _marker()
    # the child it starts sleeps: a spinning one would also end on its own CPU limit (the test stack's is 8 s),
    # so only the sandbox ending the whole pid namespace can end this one
    body = f"""
import time
MARKER = {marker!r}
if os.fork() == 0:
    {NAME_SELF.strip().replace(chr(10), chr(10) + "    ")}
    while True:
        time.sleep(1)
while True:
    pass
"""
    began = time.monotonic()
    version, text = _converted(stack, alice, f"spin-{uuid.uuid4().hex[:6]}", _payload(stack, body, "forge"))
    _assert_railyard_wrote_it(version)
    assert "did not finish within" in version["error"] or "more CPU time" in version["error"], version["error"]
    assert time.monotonic() - began < 120
    _assert_nothing_left(marker)
    _assert_registry_serves(stack, alice)


def test_writing_10_gb_fails_on_the_file_size_limit(stack, alice):
    body = """
block = b"\\0" * (1 << 20)
with open("filler", "wb") as handle:
    for _ in range(10 * 1024):
        handle.write(block)
found.append("wrote 10 GB")
"""
    version, text = _converted(stack, alice, f"disk-{uuid.uuid4().hex[:6]}", _payload(stack, body, "forge"))
    _assert_railyard_wrote_it(version)
    assert "file larger than the registry allows" in version["error"], version["error"]
    _assert_leaks_nothing(stack, text)
    _assert_registry_serves(stack, alice)


def test_many_files_under_the_size_limit_fail_on_the_disk_quota(stack, alice):
    """Files of 60 MiB (each under the 64 MiB file size limit) until 10 GB: the sandbox's disk quota (256 MiB
    in the test stack) stops the whole conversion long before, whatever it forges, and the reason says so."""
    body = """
block = b"\\0" * (1 << 20)
for number in range(170):
    with open(f"filler-{number}", "wb") as handle:
        for _ in range(60):
            handle.write(block)
found.append("wrote 10 GB in files of 60 MiB")
"""
    version, text = _converted(stack, alice, f"quota-{uuid.uuid4().hex[:6]}", _payload(stack, body, "forge"))
    _assert_railyard_wrote_it(version)
    assert "the sandbox's disk quota of 256 MiB was exceeded" in version["error"], version["error"]
    _assert_leaks_nothing(stack, text)
    _assert_registry_serves(stack, alice)


# --- archives ----------------------------------------------------------------------------------------------


def _with_entries(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A BYOP zip with the usual files plus `entries` (name, data, Unix mode)."""
    buffer = io.BytesIO(byop_zip())
    with zipfile.ZipFile(buffer, "a") as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode below is read
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


ESCAPING_ARCHIVES = {
    "symlink to a host file": [("model/passwd", b"/etc/passwd", stat.S_IFLNK | 0o777)],
    "symlinked folder, then a file through it": [("model/up", b"../../../../../etc", stat.S_IFLNK | 0o777),
                                                 ("model/up/cron.d/evil", b"* * * * * root sh", stat.S_IFREG | 0o644)],
    "absolute symlink to the data directory": [("model/data", b"/var/lib/railyard", stat.S_IFLNK | 0o777)],
    "a device node": [("model/disk", b"", stat.S_IFBLK | 0o600)],
}


@pytest.mark.parametrize("case", sorted(ESCAPING_ARCHIVES))
def test_archive_members_escaping_the_folder_are_400_and_store_nothing(stack, alice, case):
    before_models = api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"]
    before_keys = artifact_keys(stack)
    response = upload(stack, alice, f"slip-{uuid.uuid4().hex[:6]}", _with_entries(ESCAPING_ARCHIVES[case]), "custom")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and "custom model rejected: archive entry" in body["msg"], body
    assert api(stack, alice, "models/list", {"workspace_id": alice.workspace_id}).json()["models"] == before_models
    assert artifact_keys(stack) - before_keys == set(), "a rejected upload left objects behind"
