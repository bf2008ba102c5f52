"""`python -m shards inspect DIR [--verify] [--decode N]`."""

import sys

from .report import main

if __name__ == "__main__":
    sys.exit(main())
