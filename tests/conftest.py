"""Shared test configuration.

Helpers are imported as ``tests.unit.frames``: pyproject's ``pythonpath``
puts the repository root on the path.  Markers (registered in pyproject):
``lab`` (added to every test under tests/lab/) and ``slow`` (tests over
about a second).  The inner loop is ``pytest -m "not slow and not lab"``;
``scripts/test`` runs everything.
"""
