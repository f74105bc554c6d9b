"""``python -m lilaw_med`` (and ``torchrun -m lilaw_med``) runs the command line."""

import sys

from lilaw_med.cli import main

sys.exit(main())
