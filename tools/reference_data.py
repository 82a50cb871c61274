"""Where the official reference data lives: `reference/` in this repository (what it is: reference/README.md)."""
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
GOLDEN_DIR = REFERENCE_DIR / "golden"
MANIFEST_DIR = REFERENCE_DIR / "manifest"
