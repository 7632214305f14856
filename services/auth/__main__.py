"""Start the auth service: `python -m services.auth`."""

from services.auth.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
