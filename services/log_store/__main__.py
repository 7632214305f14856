"""Start the log_store service: `python -m services.log_store`."""

from services.log_store.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
