"""Start the deployer service: `python -m services.deployer`."""

from services.deployer.app import SPEC
from shared.service import main

if __name__ == "__main__":
    main(SPEC)
