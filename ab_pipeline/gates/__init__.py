"""Validity gates: checks that must pass before any analysis runs.

Declared, in order, in `registry.py` (what a gate is: `base.py`); each gate's code is in its
own module here, its brief partials in `templates/gates/`.
"""
