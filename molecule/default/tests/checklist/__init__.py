"""The deployment checklist, section by section, on the converged stack (run first)."""
