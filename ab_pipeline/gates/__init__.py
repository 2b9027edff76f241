"""Validity gates: checks that must pass before any analysis runs."""
