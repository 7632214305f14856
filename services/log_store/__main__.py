"""Start the log_store service: `python -m services.log_store`."""

import os

# Arrow's buffers from glibc's heap, not from mimalloc (pyarrow's default), which handed the memory of every
# flush back to the kernel and faulted it in again as fresh transparent huge pages: zeroing them was 57-78 % of
# the log store's CPU under batch-1000 load (docs/performance.md, item 19). Read when pyarrow is imported, so
# before anything imports it; an operator's own value wins. The engine's replicas run the same (deployer).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from shared.lean_imports import decline_unused  # noqa: E402

decline_unused()  # first: before anything imports nats or faststream (shared/lean_imports.py)

from services.log_store.app import SPEC  # noqa: E402
from shared.service import main  # noqa: E402

if __name__ == "__main__":
    main(SPEC)
