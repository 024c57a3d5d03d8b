"""The package version (one place: pyproject reads it, hessnb exports it)."""

__version__ = "0.1.0"
