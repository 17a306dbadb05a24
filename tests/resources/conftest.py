import sys
from pathlib import Path

# The LLM resource tests and their multiprocessing children share llm_support.py (pytest runs in importlib mode).
sys.path.insert(0, str(Path(__file__).resolve().parent))
