"""Orchestration zips: the checks an upload passes before it is accepted, and the environment its requirements
are installed into.

The checks read the zip's central directory only (nothing is unpacked in the service): member count, names that
escape the archive, absolute paths, symlinks, encrypted members, the declared unpacked size and compression ratio,
one `requirements.txt` at most, and an entrypoint (`main.py` at the root, else the shallowest `main.py` in a
subdirectory, alphabetically first among equals). Runs unpack the zip inside their sandbox.

Environments: one per distinct requirements file (keyed by its sha256), a virtualenv whose `.pth` adds the task
base environment (the server's virtualenv, which holds the Railyard client) behind its own site-packages, so what
the requirements pin wins and everything else comes from the base. `pip` runs inside the sandbox without network;
what the base lacks is first downloaded as binary wheels (never sdists: building one runs its code) by the
service into a wheelhouse the sandboxed pip reads. See docs/orchestrations.md for the trade-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import site
import stat
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement

from shared.errors import InvalidRequest
from shared.sandbox import Limits, Network, SandboxSpec, describe_limit, run
from shared.settings import TaskSettings

MAX_REQUIREMENTS_BYTES = 256 * 1024
RATIO_CHECKED_ABOVE = 1024 * 1024  # small members compress freely (a file of spaces); big ones are checked
READY_MARKER = ".railyard-env-ready"
ENTRYPOINT = "main.py"
REQUIREMENTS = "requirements.txt"
LOCK_POLL = 0.2  # seconds between tries of an environment's file lock another process holds (_lock)


@dataclass(frozen=True)
class CheckedZip:
    """What an accepted orchestration zip holds."""

    entrypoint: str
    requirements: str | None
    members: int
    unpacked_bytes: int


def _bad(msg: str) -> InvalidRequest:
    return InvalidRequest(f"orchestration zip refused: {msg}", code="invalid_orchestration")


def check_zip(path: Path, settings: TaskSettings) -> CheckedZip:
    """Validate an orchestration zip (see the module docstring); InvalidRequest naming the rule it breaks."""
    if path.stat().st_size > settings.max_zip_bytes:
        raise _bad(f"larger than {settings.max_zip_bytes} bytes")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise _bad("the file is not a zip archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > settings.max_zip_files:
            raise _bad(f"{len(infos)} members, more than the {settings.max_zip_files} allowed")
        total = 0
        seen: set[str] = set()
        entrypoints: list[str] = []
        requirements: list[zipfile.ZipInfo] = []
        for info in infos:
            name = info.filename
            shown = name[:200]
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
                raise _bad(f"member {shown!r} has an absolute path")
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if ".." in parts:
                raise _bad(f"member {shown!r} escapes the archive ('..')")
            if "\x00" in name:
                raise _bad("a member name holds a NUL byte")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _bad(f"member {shown!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise _bad(f"member {shown!r} is encrypted")
            normalized = "/".join(parts)
            if normalized in seen:
                raise _bad(f"member {shown!r} appears twice")
            seen.add(normalized)
            if info.is_dir():
                continue
            total += info.file_size
            if total > settings.max_unpacked_bytes:
                raise _bad(f"unpacks to more than {settings.max_unpacked_bytes} bytes")
            if info.file_size > RATIO_CHECKED_ABOVE and info.file_size > settings.max_compression_ratio * max(
                    info.compress_size, 1):
                raise _bad(f"member {shown!r} is compressed more than {settings.max_compression_ratio:g}:1 "
                           "(a zip bomb?)")
            if parts[-1] == ENTRYPOINT:
                entrypoints.append(normalized)
            if parts[-1] == REQUIREMENTS:
                requirements.append(info)
        if not entrypoints:
            raise _bad("no main.py (the entrypoint: at the root, or else the first one in a subdirectory)")
        if len(requirements) > 1:
            names = ", ".join(sorted(i.filename for i in requirements))[:300]
            raise _bad(f"more than one requirements.txt ({names}); one is allowed")
        text = None
        if requirements:
            info = requirements[0]
            if info.file_size > MAX_REQUIREMENTS_BYTES:
                raise _bad(f"requirements.txt is larger than {MAX_REQUIREMENTS_BYTES} bytes")
            try:
                text = archive.read(info).decode()
            except UnicodeDecodeError:
                raise _bad("requirements.txt is not UTF-8 text") from None
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                raise _bad(f"requirements.txt cannot be read ({type(exc).__name__})") from None
            if "\x00" in text:  # kept as the environment's text (PostgreSQL refuses NUL): was a 500, nothing said
                raise _bad("requirements.txt holds a NUL character (U+0000); save it as plain UTF-8 text")
            check_requirements(text)
    entrypoint = min(entrypoints, key=lambda n: (n.count("/"), n))
    return CheckedZip(entrypoint=entrypoint, requirements=text, members=len(infos), unpacked_bytes=total)


def check_requirements(text: str) -> list[str]:
    """The requirement lines of a requirements file; InvalidRequest for any line that would change where
    packages come from (index options, editable installs, VCS or URL references, local paths, nested files)."""
    kept = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        def refuse(why: str, number: int = number, shown: str = line[:120]) -> InvalidRequest:
            return InvalidRequest(f"requirements.txt line {number} ({shown!r}) refused: {why}; list packages by "
                                  "name and version only (e.g. 'requests==2.31.0')", code="invalid_requirements")

        if line.startswith("-"):
            raise refuse("options are not allowed (no --index-url, --extra-index-url, -e, -r, -c, --find-links)")
        lowered = line.lower()
        if "://" in line or lowered.startswith(("git+", "hg+", "svn+", "bzr+")) or " @ " in line or "@" in line:
            raise refuse("URLs and VCS references are not allowed")
        if line.startswith((".", "/", "~", "\\")) or "/" in line or "\\" in line:
            raise refuse("local paths are not allowed")
        try:
            Requirement(line)
        except InvalidRequirement:
            raise refuse("not a requirement specifier") from None
        kept.append(line)
    return kept


def requirements_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def work_dir(settings: TaskSettings, data_dir: Path) -> Path:
    return (settings.work_dir or data_dir / "tasks").expanduser().absolute()


def env_dir(root: Path, sha: str) -> Path:
    return root / "envs" / sha


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


# Runs inside the sandbox, in the (empty or half-made) environment directory: make the virtualenv, put the base
# environment behind it, install. argv: base site-packages, requirements file, wheelhouse or "".
_BOOTSTRAP = r"""
import os, subprocess, sys, venv
base, requirements, wheelhouse = sys.argv[1:4]
venv.EnvBuilder(with_pip=False, clear=False, symlinks=True).create(".")
lib = os.path.join("lib", "python%d.%d" % sys.version_info[:2], "site-packages")
with open(os.path.join(lib, "_railyard_base.pth"), "w") as pth:
    pth.write("import site; site.addsitedir(%r)\n" % base)
command = [os.path.join("bin", "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-cache-dir", "--no-index", "--only-binary=:all:", "-r", requirements]
if wheelhouse:
    command += ["--find-links", wheelhouse]
sys.exit(subprocess.call(command))
"""


def base_site_packages() -> str:
    """The task base environment: the server's own site-packages (with the Railyard client)."""
    return site.getsitepackages()[0]


def _tail(text: str, limit: int = 1500) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-12:])[-limit:]


async def install_env(root: Path, sha: str, requirements: str, settings: TaskSettings) -> tuple[bool, str | None]:
    """Install a requirements file into its environment (once per machine; a file lock serializes processes).
    (ok, reason): reason holds the installer's last lines when it failed."""
    env = env_dir(root, sha)
    if (env / READY_MARKER).exists():
        return True, None
    env.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env.parent / f"{sha}.lock"
    lock = await _lock(lock_path)
    try:
        if (env / READY_MARKER).exists():
            return True, None
        shutil.rmtree(env, ignore_errors=True)
        scratch = root / "envs" / f"{sha}.inputs"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        (scratch / REQUIREMENTS).write_text(requirements)
        scratch.chmod(0o755)
        (scratch / REQUIREMENTS).chmod(0o644)
        ok, output = await _pip(env, scratch, None, settings)
        if not ok and settings.install_from_index:
            wheelhouse = scratch / "wheels"
            downloaded, why = await _download(scratch / REQUIREMENTS, wheelhouse, settings)
            if not downloaded:
                return False, f"downloading the requirements failed:\n{why}"
            shutil.rmtree(env, ignore_errors=True)
            ok, output = await _pip(env, scratch, wheelhouse, settings)
        if not ok:
            return False, f"installing the requirements failed:\n{output}"
        (env / READY_MARKER).write_text(sha)
        shutil.rmtree(scratch, ignore_errors=True)
        return True, None
    finally:
        lock.close()


def _readable_by_all(folder: Path) -> None:
    folder.chmod(0o755)
    for item in folder.iterdir():
        item.chmod(0o644)


async def _lock(path: Path):
    """The file lock of an environment's install, held until the handle is closed: tried every LOCK_POLL seconds
    (another process on this machine installs the environment meanwhile). Before, a thread waited in a blocking
    flock: a cancel (the claim taken over, a stop) left it waiting until the other install ended, the lock then
    taken and dropped by nobody's, and a process's exit (asyncio's shutdown of its default executor) waited for it."""
    handle = await asyncio.to_thread(open, path, "a")  # held until the install ends
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)
    except BaseException:
        handle.close()
        raise


async def _pip(env: Path, scratch: Path, wheelhouse: Path | None, settings: TaskSettings) -> tuple[bool, str]:
    spec = SandboxSpec(
        argv=[sys.executable, "-c", _BOOTSTRAP, base_site_packages(), str(scratch / REQUIREMENTS),
              str(wheelhouse or "")],
        workdir=env,
        env={"PIP_NO_INPUT": "1"},
        readonly_paths=(scratch,),
        limits=Limits(memory_bytes=settings.run_memory_mb << 20, cpu_seconds=int(settings.install_timeout),
                      processes=256, open_files=1024, file_size_bytes=1 << 30,
                      wall_seconds=settings.install_timeout, disk_bytes=settings.install_disk_mb << 20,
                      disk_files=settings.install_disk_files),
        network=Network.NONE,
        at_once=settings.max_runs_per_process,  # installs run beside runs: a share of the CPUs too
    )
    result = await run(spec)
    output = result.stdout.decode(errors="replace") + "\n" + result.stderr_tail
    if result.limit_hit:
        return False, f"{describe_limit(result.limit_hit, spec.limits)}\n{_tail(output)}"
    return result.returncode == 0, _tail(output)


async def _download(requirements: Path, wheelhouse: Path, settings: TaskSettings) -> tuple[bool, str]:
    """Binary wheels of the requirements (and their dependencies) from the package index, outside the sandbox:
    `--only-binary=:all:` means no package's code runs here (wheels are unpacked, never built)."""
    await asyncio.to_thread(wheelhouse.mkdir, parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "download", "--no-input", "--disable-pip-version-check", "--only-binary=:all:",
        "--dest", str(wheelhouse), "-r", str(requirements),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(wheelhouse), "PIP_NO_INPUT": "1"})
    try:
        output, _ = await asyncio.wait_for(process.communicate(), settings.install_timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False, f"timed out after {settings.install_timeout:g} s"
    except BaseException:  # cancelled (the install stopped: its claim taken over, a stop): before, pip ran on
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    await asyncio.to_thread(_readable_by_all, wheelhouse)
    return process.returncode == 0, _tail(output.decode(errors="replace"))
