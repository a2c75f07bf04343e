"""``python -m rllib_drqn``: the ``rllib`` command without the console script."""

from __future__ import annotations

import sys

from rllib_drqn.cli import main

if __name__ == "__main__":
    sys.exit(main())
