"""``python -m asgml.report <runs dir>``: see `asgml.report.cli.main`."""

import sys

from asgml.report import main

if __name__ == "__main__":
    sys.exit(main())
