"""Railyard's common library: settings, bus, errors, messages, storage adapters and codecs."""

__version__ = "0.1.0"
