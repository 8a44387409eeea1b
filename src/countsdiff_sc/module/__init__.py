"""Subpackage (populated by its modules)."""
