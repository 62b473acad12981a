"""``python -m apimart_async``: the same as the `apimart-async` command."""

import sys

from ._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
