"""``python -m blindbox``: the same command line as the ``blindbox`` script."""

import sys

from blindbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
