"""Traceback text a user is shown names its files without the host's folders: a library's file from its package on
(`sklearn/base.py`), a deployed package's own by its path in the archive (`backend/text_classifier.py`), a task run's
own by its path in the orchestration (`main.py`, `lib/util.py`), any other by its name (`decoder.py`). The host's
absolute paths (the data directory with its work, cache and environment folders, the platform's and Python's
installations) are the platform's internals, not the tenant's (docs/security.md). The same goes for a path in an
exception's own message where Python writes one: an OSError's file (`[Errno 2] No such file or directory:
'/srv/data/.../model.bin'`, and `-> '/...'` for its second) and an ImportError's module file (`cannot import name 'x'
from 'pkg' (/opt/.../site-packages/pkg/__init__.py)`), in a traceback's last line and wherever else such a message is
shown (a request's error quotes it: services/engine/runtimes.py). Not renamed (session 41): a path of any other
message (a library's own words, "Load model from /srv/... failed"), a warning's line (`/opt/.../x.py:3:
UserWarning: ...`), and a path a task run's log splits across two 16-KiB pieces.

Used by the engine (a request's error: services/engine/runtimes.py, sandboxed.py; f4c57130, 59b346a2, 8d122876), the
registry (a conversion's stderr excerpt: services/registry/worker.py) and the task scheduler (a run's log lines and
reason: services/task_scheduler/runner.py). Light: `re` and `pathlib` only (tests/unit/test_lean_imports.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# an absolute path in a traceback line (a frame: `File "/...", line 3, in f`; a SyntaxError: `File "/...", line 3`),
# and nothing else: a task run's log lines are its own output, where `File "/data/out.csv" written` or `File "/ is
# the root"` is the user's text, kept as printed
FRAME_FILE = re.compile(r'File "(/[^"\n]*)"(?=, line \d)')
# an OSError's file(s) in its message, as Python writes them (`[Errno N] strerror: 'file'`, `... -> 'file2'`), and
# an ImportError's module file (`cannot import name 'x' from 'pkg' (/.../pkg/__init__.py)`): the tenant's code's
# exception text, quoted in a request's error and ending its traceback, carried the host's folders. Each start's
# search is short: a strerror (no `[`, at most 500 characters) and Python's own words about the module. Before (any
# characters up to the line's end), each `[Errno N] ` or `cannot import name` of a line searched to its end: a task
# run printing 16-KiB lines of them held the scheduler's event loop ~0.5 s a line, an exception's text of 1 MB of
# them the engine's worker for minutes
OS_ERROR_FILE = re.compile(r"(\[Errno -?\d+\] [^'\n\[]{0,500}?: )'(/[^'\n]*)'(?:( -> )'(/[^'\n]*)')?")
IMPORT_FILE = re.compile(r"(cannot import name '[^'\n]{0,500}' from (?:partially initialized module )?'[^'\n]{0,500}' "
                         r"(?:\(most likely due to a circular import\) )?\()(/[^()\n]*)\)")
PACKAGE_ROOTS = ("site-packages", "dist-packages")
BYOP_FOLDER = ".byop"  # the suffix of the folder a BYOP archive is unpacked to (ByopRuntime._unpack)
PATH_ROOM = 4096
"""Characters read before an excerpt's start: a traceback's path that begins before the excerpt is still named as a
file, not cut inside the host's folders."""


def shown_file(path: str, roots: Sequence[str] = ()) -> str:
    """A traceback's file as a client's error shows it: under one of `roots` (a task run's working folder, where its
    orchestration is unpacked) by its path from there; a deployed package's own by its path in the archive (from the
    last `.byop` folder ByopRuntime unpacks it to: by its name alone, two of its files of one name, `model/__init__.py`
    and `utils/__init__.py`, could not be told apart); a library's from its package on; any other by its name."""
    for root in roots:
        folder = root.rstrip("/") + "/"
        if path.startswith(folder) and len(path) > len(folder):
            return path[len(folder):]
    parts = Path(path).parts
    for index in range(len(parts) - 2, -1, -1):  # the last such folder: nothing of the host's path before it shows
        if parts[index].endswith(BYOP_FOLDER):
            return "/".join(parts[index + 1:])
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in PACKAGE_ROOTS and index + 1 < len(parts):
            return "/".join(parts[index + 1:])
    return parts[-1] if parts else path


def named_files(text: str, roots: Sequence[str] = ()) -> str:
    """`text` with each traceback line's absolute file (`File "/...", line N`), and each absolute file of an OSError's
    or an ImportError's message as Python writes them (OS_ERROR_FILE, IMPORT_FILE), named as shown_file names it; any
    other text as it is."""
    if 'File "/' in text:
        text = FRAME_FILE.sub(lambda found: f'File "{shown_file(found[1], roots)}"', text)
    if "[Errno " in text:
        text = OS_ERROR_FILE.sub(lambda found: f"{found[1]}'{shown_file(found[2], roots)}'" + (
            f"{found[3]}'{shown_file(found[4], roots)}'" if found[4] else ""), text)
    if "cannot import name " in text:
        text = IMPORT_FILE.sub(lambda found: f"{found[1]}{shown_file(found[2], roots)})", text)
    return text
