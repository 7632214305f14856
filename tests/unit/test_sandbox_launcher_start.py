"""How a sandbox's launcher is started (shared/sandbox.py `_launcher_argv`): imported from its folder, so Python runs it
from its bytecode cache, not compiled from its 1,500 lines at every start as a script is (~20 ms of CPU per sandbox:
a task run, a conversion, an engine worker); and with the `sys.path` of `python -I -S` once it is loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys

from shared import sandbox


def copied_launcher(tmp_path, monkeypatch, extra: str = ""):
    copy = tmp_path / "sandbox_launcher.py"
    shutil.copy(sandbox.LAUNCHER, copy)
    if extra:
        with copy.open("a") as handle:
            handle.write(extra)
    monkeypatch.setattr(sandbox, "LAUNCHER", copy)
    return copy


def test_the_launcher_is_run_from_its_bytecode_cache(tmp_path, monkeypatch):
    copied_launcher(tmp_path, monkeypatch)
    started = subprocess.run(sandbox._launcher_argv(), env={}, capture_output=True, text=True, timeout=60, check=False)
    # its main() ran (and found no configuration: the one variable it is given is missing)
    assert started.returncode == 1 and "KeyError: 'RAILYARD_SANDBOX_LAUNCH'" in started.stderr, started.stderr
    # before: run as a script (`python -I -S sandbox_launcher.py`), compiled at every start and never cached
    assert list((tmp_path / "__pycache__").glob("sandbox_launcher.*.pyc"))


def test_the_launcher_imports_with_the_path_of_python_isolated(tmp_path, monkeypatch):
    # main() replaced in the copy by one saying the module search path it runs with: its folder is not on it, so what
    # the launcher imports later (socket, fcntl... in the sandbox) is found where `python -I -S` finds it
    copied_launcher(tmp_path, monkeypatch, "\n\ndef main():\n    print(repr(sys.path))\n")
    started = subprocess.run(sandbox._launcher_argv(), env={}, capture_output=True, text=True, timeout=60, check=True)
    isolated = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print(repr(sys.path))"], env={},
                              capture_output=True, text=True, timeout=60, check=True)
    assert started.stdout == isolated.stdout
    assert str(tmp_path) not in started.stdout
