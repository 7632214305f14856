"""The engine's one-batch Arrow IPC streams (a batch-1 request, an answer's part) live in shared.arrow_codec with the
general codec, sharing its schema cache (`read_batch`, `schema_message`, `batch_stream`, `write_stream`); these names
are kept for the engine's importers (fast_lane.py, batching.py)."""

from __future__ import annotations

from shared.arrow_codec import _SCHEMAS as _schemas  # noqa: F401 - the one cache, read by tests
from shared.arrow_codec import CONTINUATION, batch_stream, read_batch, schema_message, write_stream
from shared.arrow_codec import IPC_EOS as END_OF_STREAM

__all__ = ["CONTINUATION", "END_OF_STREAM", "batch_stream", "read_batch", "schema_message", "write_stream"]
