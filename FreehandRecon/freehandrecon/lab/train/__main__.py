"""``python -m freehandrecon.train ...`` (e.g. under torchrun)."""

import sys

from .command import main

sys.exit(main())
