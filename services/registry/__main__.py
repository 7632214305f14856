"""Start the registry service: `python -m services.registry`."""

from shared.lean_imports import decline_unused

decline_unused()  # first: before anything imports nats or faststream (shared/lean_imports.py)

from services.registry.app import SPEC  # noqa: E402
from shared.service import main  # noqa: E402

if __name__ == "__main__":
    main(SPEC)
