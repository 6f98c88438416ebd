"""``python -m bench``: run the benchmark harness (``--quick`` for a smoke run)."""

import sys

from bench.run import main

sys.exit(main())
