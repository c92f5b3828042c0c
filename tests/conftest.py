import sys
from pathlib import Path

# Let tests import their helpers as ``tests.unit.frames`` from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
