"""Faults on the same converged stack, after the checklist: each leaves it healthy for the next."""
