"""`python -m nemotron_eval.deploy.server`: see `main`."""

import sys

from nemotron_eval.deploy.server.main import main

if __name__ == "__main__":
    sys.exit(main())
