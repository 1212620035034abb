"""python -m advprune.cli: the `advprune` command."""

import sys

from advprune.cli import main

sys.exit(main())
