"""Spellbook: LAION-Aesthetics and prompt corpora in one SQLite database, explored in Datasette."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
