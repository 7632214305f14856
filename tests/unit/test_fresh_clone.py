"""A fresh clone must work on a machine that never ran Railyard: the repository may not depend on anything outside
itself. A tracked symlink into /tmp once kept `make test` green here and broken everywhere else."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# an absolute path of the machine a file was written on: /tmp/..., /root/..., /home/<user>/..., /Users/<user>/...
MACHINE_PATH = re.compile(r"(?:^|[^A-Za-z0-9_.\-/])(/(?:tmp|root|home|Users)/[A-Za-z0-9_.\-]+)")
# prose and data where such a path is an example, not a dependency
EXEMPT_SUFFIXES = (".md", ".txt", ".json", ".lock")
EXEMPT_DIRS = ("docs/", "protos/")
COMMENT = re.compile(r"^\s*(#|//|--|;)")
# a line that names such a path on purpose (a path inside a sandbox, a path a test proves unreachable) says so
ON_PURPOSE = "not-a-machine-path"


def tracked() -> list[tuple[str, str]]:
    """(mode, path) of every file git tracks here."""
    try:
        out = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an installed copy has no tracked files to check)")
    entries = []
    for entry in out.decode().split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            entries.append((meta.split()[0], path))
    return entries


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) of every machine path outside comment lines."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if COMMENT.match(line) or ON_PURPOSE in line:
            continue
        found += [(number, match) for match in MACHINE_PATH.findall(line)]
    return found


def test_the_repository_tracks_no_symlink():
    links = [path for mode, path in tracked() if mode == "120000"]
    assert not links, f"tracked symlinks point outside a fresh clone: {links}"


def test_no_tracked_file_names_a_path_of_the_machine_it_was_written_on():
    offenders = []
    for mode, path in tracked():
        if mode == "120000" or path.endswith(EXEMPT_SUFFIXES) or path.startswith(EXEMPT_DIRS):
            continue
        try:
            text = (REPO / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        offenders += [f"{path}:{line}: {found}" for line, found in machine_paths(text)]
    assert not offenders, "files name paths that exist only on the machine they were written on:\n" + "\n".join(
        offenders)


def test_the_check_finds_what_it_is_for():
    tmp, root = "/" + "tmp", "/" + "root"  # spelled apart so this file does not trip the check itself
    assert machine_paths(f'VENV = "{tmp}/mlf"\n') == [(1, f"{tmp}/mlf")]
    assert machine_paths(f"cache = Path('{root}/.cache/railyard')") == [(1, f"{root}/.cache")]
    assert machine_paths(f"# see {tmp}/example in a comment\n") == []
    assert machine_paths(f"open('{tmp}/x', 'w')  # {ON_PURPOSE}: the sandbox's own") == []
    assert machine_paths(f"url = 'http://host{tmp}/x'; rel = 'a{tmp}/b'") == []
