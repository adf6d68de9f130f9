"""``python -m maediff_core.cli``: how the Slicer module and the tests start the command line."""

import sys

from . import main

sys.exit(main())
