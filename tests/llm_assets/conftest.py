import sys
from pathlib import Path

# The pipeline tests and their crash-test child share pipeline_support.py (pytest runs in importlib mode).
sys.path.insert(0, str(Path(__file__).resolve().parent))
