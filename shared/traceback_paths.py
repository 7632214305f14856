"""Traceback text a user is shown names its files without the host's folders: a library's file from its package on
(`sklearn/base.py`), a deployed package's own by its path in the archive (`backend/text_classifier.py`), a task run's
own by its path in the orchestration (`main.py`, `lib/util.py`), any other by its name (`decoder.py`). The host's
absolute paths (the data directory with its work, cache and environment folders, the platform's and Python's
installations) are the platform's internals, not the tenant's (docs/security.md). The same goes for a path in an
exception's own message where Python writes one: an OSError's file (`[Errno 2] No such file or directory:
'/srv/data/.../model.bin'`, and `-> '/...'` for its second) and an ImportError's module file (`cannot import name 'x'
from 'pkg' (/opt/.../site-packages/pkg/__init__.py)`), in a traceback's last line and wherever else such a message is
shown (a request's error quotes it: services/engine/runtimes.py); a file Python quotes as `repr` does (`b'/...'` for
a bytes name, `"/..."` for one holding a `'`, a backslash escaping) is named the same way (session 42), and so is a
frame's or a "-quoted file inside a JSON string (`File \\"/...\\", line 3`, `: \\"/...\\"`: a run's JSON log line
carrying its error; session 43). So are Python 3.13's words for a module named as another one (`(consider renaming
'/.../random.py' since it has the same name ...`, `partially initialized module 'x' from '/.../x.py' has no attribute
...`) and a warning's line as Python writes it to stderr (`/opt/.../x.py:3: UserWarning: ...`, at a line's start or
after the `WARNING:py.warnings:` of logging's default format, which logging.captureWarnings writes it with). A line
is a warning's when its file is a Python source (`.py`), whatever its category's name (a linter's `/.../main.py:3:
error: ...` is named too), or its category's name ends in `Warning` and is not the bare `Warning` (a run's own
`/data/in.csv:3: Warning: bad row` is the user's text, kept as printed). Not renamed (docs/security.md): a path of
any other message (a library's own words, "Load model from /srv/... failed"), a warning's line written otherwise
(another logging format's prefix before it, a file not `.py` with a category not named `...Warning` or named
`Warning`, a folder with a `:` in its name), Python 3.13's unquoted `'%U'` file when it holds a `'`, and a file whose
match runs over FILE_ROOM characters in a task run's line longer than 16 KiB (services/task_scheduler/runner.py cuts
such a line into pieces, each named alone, outside any file a piece would split: cut_outside_files, session 43), or
whose rest the run printed over FLUSH_SECONDS (0.2 s) after the line went over 16 KiB (runner._pump cuts with what
has come then).

Used by the engine (a request's error: services/engine/runtimes.py, sandboxed.py; f4c57130, 59b346a2, 8d122876), the
registry (a conversion's stderr excerpt: services/registry/worker.py) and the task scheduler (a run's log lines and
reason: services/task_scheduler/runner.py). Light: `re` and `pathlib` only (tests/unit/test_lean_imports.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# an absolute path in a traceback line (a frame: `File "/...", line 3, in f`; a SyntaxError: `File "/...", line 3`),
# and nothing else: a task run's log lines are its own output, where `File "/data/out.csv" written` or `File "/ is
# the root"` is the user's text, kept as printed. Python writes the file unescaped between its quotes: one holding a
# `"` (`File "/srv/a"b/x.py", line 3`) ends at the `"` before `, line N` (session 43; before, it was not read at all
# and showed whole). A file's read stops at the next `File "` (the user's `File "/data/out.csv" written; File "/...",
# line 3` names the second only), so each character is read for the one start before it: linear
FRAME_FILE = re.compile(r'File "(/(?:(?!File ")[^"\n]|"(?!, line \d))*)"(?=, line \d)')
# the same frame inside a JSON string (a run's JSON log line carrying its traceback: `File \"/...\", line 3`), each
# JSON escape (`\\`, `\"`, `\u00e9`) read as one character; before session 43 its file showed whole
ESCAPED_FRAME_FILE = re.compile(r'File \\"(/(?:(?!File \\")[^"\\\n]|\\[^"\n]|\\"(?!, line \d))*)\\"(?=, line \d)')
# an OSError's file(s) in its message, as Python writes them (`[Errno N] strerror: 'file'`, `... -> 'file2'`), and
# an ImportError's module file (`cannot import name 'x' from 'pkg' (/.../pkg/__init__.py)`): the tenant's code's
# exception text, quoted in a request's error and ending its traceback, carried the host's folders. Each start's
# search is short: a strerror (no `[`, at most 500 characters) and Python's own words about the module. Before (any
# characters up to the line's end), each `[Errno N] ` or `cannot import name` of a line searched to its end: a task
# run printing 16-KiB lines of them held the scheduler's event loop ~0.5 s a line, an exception's text of 1 MB of
# them the engine's worker for minutes
#
# A file as Python's repr quotes it: '/...' ("/..." when it holds a ' and no "; a backslash escapes the quote and
# itself), b'/...' for a bytes name. Before session 42 only '/...' was read: b'/srv/...' was not renamed at all, and a
# '-quoted path holding an escaped \' was cut there, the folders after it shown. Each character is read by one branch
# (a backslash only by `\\.`), so the scan is linear and stops at the first quote that closes it. Inside a JSON string
# "/..." is written \"/...\" (session 43: a run's JSON log line showed it whole), a JSON escape read as one character.
#
# An ImportError's module file is what Python writes between `(` and `)`, unquoted: a folder's own parentheses
# (`/srv/data/copy (1)/pkg/__init__.py`, one level of them) are part of it (session 43; before, such a file was not
# read and showed whole). Its read stops at a second `(` inside one, or its line's end: linear.


def _quoted(n: int) -> str:
    return (rf"(?P<b{n}>b?)(?:'(?P<s{n}>/(?:[^'\\\n]|\\.)*)'"
            rf'|"(?P<d{n}>/(?:[^"\\\n]|\\.)*)"'
            rf'|\\"(?P<j{n}>/(?:[^"\\\n]|\\[^"\n])*)\\")')


OS_ERROR_FILE = re.compile(r"""(?P<head>\[Errno -?\d+\] [^'"\n\[]{0,500}?: )""" + _quoted(1)
                           + r"(?:(?P<arrow> -> )" + _quoted(2) + ")?")
IMPORT_FILE = re.compile(r"(cannot import name '[^'\n]{0,500}' from (?:partially initialized module )?'[^'\n]{0,500}' "
                         r"(?:\(most likely due to a circular import\) )?\()(/(?:[^()\n]|\([^()\n]*\))*)\)")
# Python 3.13's words for a module that hides another of its name (an ImportError's file by repr, an AttributeError's
# as '%U') and for an AttributeError of a module half-initialised: each start searches to its quote's end only
RENAMING_FILE = re.compile(r"(?P<head>\(consider renaming )" + _quoted(1) + r"(?= (?:since|if) it has the same name )")
PARTIAL_MODULE_FILE = re.compile(r"(?P<head>partially initialized module '[^'\n]{0,500}' from )" + _quoted(1)
                                 + r"(?= has no attribute )")
# a warning as Python's warnings module writes it (`{file}:{line}: {category}: {message}`), at a line's start only
# (one search a line: a '/' anywhere would let each start read to its line's end), or after the `WARNING:py.warnings:`
# logging's default format writes before it once logging.captureWarnings(True) sends warnings to the `py.warnings`
# logger (session 43; before, that line's file was shown whole). Which lines are a warning's (session 43's rule): a
# Python source's (`.py`) whatever its category's name (a class of the user's need not end in `Warning`: `Deprecated`
# was shown whole), or any file's with a category named `...Warning` other than the bare `Warning` (a run's own
# `/data/in.csv:3: Warning: bad row` was renamed `in.csv:3: ...`; `/data/in.csv:3: bad row` never was)
WARNING_FILE = re.compile(r"^(?P<head>(?:WARNING:py\.warnings:)?)(?:(?P<source>/[^:\n]*\.py)(?=:\d+: [^\W\d]\w*: )"
                          r"|(?P<file>/[^:\n]*)(?=:\d+: \w+Warning: ))", re.MULTILINE)
PACKAGE_ROOTS = ("site-packages", "dist-packages")
BYOP_FOLDER = ".byop"  # the suffix of the folder a BYOP archive is unpacked to (ByopRuntime._unpack)
PATH_ROOM = 4096
"""Characters read before an excerpt's start: a traceback's path that begins before the excerpt is still named as a
file, not cut inside the host's folders."""
FILE_ROOM = PATH_ROOM + 2048
"""Characters a file's match may take past a cut (the words before the file, a file of PATH_ROOM, what must follow
it): text cut into pieces is read this far past each cut (cut_outside_files)."""
# what a pattern's lookahead wants after its match: a piece holding the match must hold it too
_FOLLOWED = ((FRAME_FILE, re.compile(r", line \d")), (ESCAPED_FRAME_FILE, re.compile(r", line \d")),
             (OS_ERROR_FILE, None), (IMPORT_FILE, None),
             (RENAMING_FILE, re.compile(r" (?:since|if) it has the same name ")),
             (PARTIAL_MODULE_FILE, re.compile(r" has no attribute ")), (WARNING_FILE, re.compile(r":\d+: \w+: ")))


def cut_outside_files(text: str, limit: int) -> int:
    """Where to cut `text` (longer than `limit`) into a first piece of at most `limit` characters and the rest, so
    that each piece, named alone by named_files, names the files the whole would: `limit`, or the start of the first
    of the files' matches (a file with its pattern's words before it and what must follow it) that `limit` would cut.
    A task run's line longer than a piece (services/task_scheduler/runner.py) was cut at 16 KiB whatever stood there,
    and a host path across the cut was named in neither piece (session 43). `limit` when such a match starts the text
    (longer than a piece: no real file is), and a match running past FILE_ROOM characters after `limit` is not seen.
    Each pattern searches the text once: linear."""
    window = text[:limit + FILE_ROOM]
    spans: list[tuple[int, int]] = []
    for pattern, followed in _FOLLOWED:
        for found in pattern.finditer(window):
            if found.start() >= limit:
                break
            after = followed.match(window, found.end()) if followed else None  # what its lookahead saw: always there
            spans.append((found.start(), after.end() if after else found.end()))
    cut = limit
    for start, end in sorted(spans, reverse=True):  # by start, the last first: a cut moved back is checked again
        if start < cut < end:
            cut = start
    return cut or limit


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
    """`text` with each traceback line's absolute file (`File "/...", line N`, or `File \\"/...\\", line N` inside a
    JSON string: ESCAPED_FRAME_FILE), each absolute file of an OSError's or an ImportError's message as Python writes
    them (OS_ERROR_FILE, IMPORT_FILE, RENAMING_FILE, PARTIAL_MODULE_FILE) and a warning line's (WARNING_FILE) named as
    shown_file names it; any other text as it is."""
    if 'File "/' in text:
        text = FRAME_FILE.sub(lambda found: f'File "{shown_file(found[1], roots)}"', text)
    if 'File \\"/' in text:
        text = ESCAPED_FRAME_FILE.sub(lambda found: f'File \\"{shown_file(found[1], roots)}\\"', text)
    if "[Errno " in text:
        text = OS_ERROR_FILE.sub(lambda found: found["head"] + _requoted(found, 1, roots) + (
            found["arrow"] + _requoted(found, 2, roots) if found["arrow"] else ""), text)
    if "cannot import name " in text:
        text = IMPORT_FILE.sub(lambda found: f"{found[1]}{shown_file(found[2], roots)})", text)
    if "(consider renaming " in text:
        text = RENAMING_FILE.sub(lambda found: found["head"] + _requoted(found, 1, roots), text)
    if "partially initialized module " in text:
        text = PARTIAL_MODULE_FILE.sub(lambda found: found["head"] + _requoted(found, 1, roots), text)
    if "Warning: " in text or ".py:" in text:
        text = WARNING_FILE.sub(lambda found: found["head"] + shown_file(found["source"] or found["file"], roots),
                                text)
    return text


def _requoted(found: re.Match[str], n: int, roots: Sequence[str]) -> str:
    """The `n`th quoted file of `found` (`_quoted`) named as shown_file names it, in its own quotes and prefix."""
    quote, file = next((quote, found[f"{group}{n}"]) for quote, group in (("'", "s"), ('"', "d"), ('\\"', "j"))
                       if found[f"{group}{n}"] is not None)
    return f"{found[f'b{n}']}{quote}{shown_file(file, roots)}{quote}"
