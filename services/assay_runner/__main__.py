"""Start the assay_runner service: `python -m services.assay_runner`."""

from services.assay_runner.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
