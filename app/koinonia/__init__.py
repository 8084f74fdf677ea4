"""Koinonia: the church SMS platform API (Quart + SAQ)."""

__version__ = "0.1.0"
