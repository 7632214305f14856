"""Railyard's common library: settings, bus, errors, messages, storage adapters and codecs."""

from importlib import metadata as _metadata
from pathlib import Path as _Path


def _version() -> str:
    """The installed distribution's version; from a source tree, client/VERSION (the one place it is written)."""
    try:
        return _metadata.version("railyard")
    except _metadata.PackageNotFoundError:
        return (_Path(__file__).resolve().parent.parent / "client" / "VERSION").read_text().strip()


__version__ = _version()
