"""Start the task_scheduler service: `python -m services.task_scheduler`."""

from services.task_scheduler.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
