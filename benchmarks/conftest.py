"""The checks of the study's code (``python -m pytest benchmarks``): run by hand before a study, never in CI,
which collects ``tests/`` alone. They share the tiny phantom dataset of the tests."""

from tests.conftest import dataset  # noqa: F401 (a fixture)
