"""`python -m synthetic`: the command line."""

from __future__ import annotations

import sys

from synthetic.cli import main

sys.exit(main())
