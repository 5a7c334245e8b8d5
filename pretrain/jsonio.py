"""Kept for existing importers: the atomic JSON writer lives in ``core.jsonio``."""

from core.jsonio import finite_or_none, write_json_atomic

__all__ = ["finite_or_none", "write_json_atomic"]
