"""Progress bars (Rich) for uploads and waits, shown on a terminal only unless asked for."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

LARGE_FILE = 8 * 1024 * 1024  # uploads from this size show a bar (on a terminal) unless told otherwise


def wanted(progress: bool | None, size: int = LARGE_FILE) -> bool:
    """Show a bar? Explicit True/False wins; None means: on a terminal, for large enough work."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and size >= LARGE_FILE


class ProgressReader(io.RawIOBase):
    """A readable file that advances a progress bar and a sha256 as the HTTP client reads it."""

    def __init__(self, source: IO[bytes], size: int, bar: Progress | None, task: Any) -> None:
        super().__init__()
        self.source, self.size, self.bar, self.task = source, size, bar, task
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        chunk = self.source.read(size)
        if chunk:
            self.sha256.update(chunk)
            if self.bar is not None:
                self.bar.advance(self.task, len(chunk))
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.source.seek(offset, whence)

    def tell(self) -> int:
        return self.source.tell()

    def seekable(self) -> bool:
        return True


@contextmanager
def upload_bar(name: str, size: int, show: bool) -> Iterator[tuple[Progress | None, Any]]:
    """A bytes bar for an upload (or nothing when not shown)."""
    if not show:
        yield None, None
        return
    from rich.console import Console  # (here: a command without a bar needs no Rich, docs/performance.md item 46)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=False) as bar:
        yield bar, bar.add_task(f"uploading {name}", total=size)


@contextmanager
def wait_spinner(description: str, show: bool) -> Iterator[Any]:
    """A spinner with elapsed time for a wait; yields a function that updates its text."""
    if not show:
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)
        yield lambda text: bar.update(task, description=f"{description}: {text}")
