"""``python -m collectors.simulator``: see cli.py."""

import sys

from collectors.simulator.cli import main

sys.exit(main())
