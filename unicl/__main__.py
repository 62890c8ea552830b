"""`python -m unicl` is the `unicl` command."""

import sys

from unicl.cli import main

sys.exit(main())
