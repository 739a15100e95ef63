"""`python -m workbench ...`: the command line (`workbench.run.cli`)."""

import sys

from workbench.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
