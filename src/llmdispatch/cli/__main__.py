"""``python -m llmdispatch.cli``."""

import sys

from llmdispatch.cli import main

sys.exit(main())
