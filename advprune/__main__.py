"""python -m advprune: the `advprune` command."""

import sys

from advprune.cli import main

sys.exit(main())
