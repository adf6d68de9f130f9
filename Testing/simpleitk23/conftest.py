"""Run with SimpleITK 2.3 (make test-simpleitk23): the core's registration from the source tree,
in a Python with no torch, only numpy and that SimpleITK."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
