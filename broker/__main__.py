"""``python -m broker``: the same as the ``telerad`` command."""

import sys

from broker.cli import main

sys.exit(main())
