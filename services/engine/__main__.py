"""Start the engine service: `python -m services.engine`."""

from services.engine.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
