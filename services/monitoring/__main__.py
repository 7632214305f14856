"""Start the monitoring service: `python -m services.monitoring`."""

from services.monitoring.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
