"""Start the workflow_lineage service: `python -m services.workflow_lineage`."""

from services.workflow_lineage.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
