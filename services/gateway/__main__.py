"""Start the gateway: `python -m services.gateway`."""

import os

# Arrow's buffers (the IPC a request and an answer cross the bus as) from glibc's heap, not from mimalloc, pyarrow's
# default, which kept reserving OS memory and faulting it in again: the gateway's page faults per 1,000-row OIP
# request 32-54 -> 6-29 (docs/performance.md, issue 20). Read when pyarrow is imported, so before anything imports
# it; an operator's own value wins. The log store and the engine's replicas run the same.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from shared.heap import keep_heap  # noqa: E402

# a request's blocks from the heap the last one used, not faulted in again: a 1,000-row records request's ~200 page
# faults in the gateway -> ~0 (shared/heap.py, docs/performance.md items 62, 66). Before any thread starts: its
# threads share the one arena, so what the heap keeps is bounded for the process
keep_heap()

from shared.lean_imports import decline_unused  # noqa: E402

decline_unused(serves_http=True)  # first: before anything imports nats or faststream (shared/lean_imports.py)

from shared.sched_hint import request_path_slice  # noqa: E402
from shared.settings import Settings  # noqa: E402

# on every request's path: a short scheduler slice for this thread (the event loop's) and every thread started later
try:
    request_path_slice(Settings().request_path_slice_us)
except ValueError:  # an invalid setting (pydantic's ValidationError): main() below reports it in one clear line
    pass

from services.gateway.app import SPEC  # noqa: E402
from shared.service import main  # noqa: E402

if __name__ == "__main__":
    main(SPEC)
