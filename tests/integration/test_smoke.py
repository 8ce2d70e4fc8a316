import pytest
import torch

import reverso
from reverso import models


def test_lenet_fc_converts_and_runs():
    td = reverso.topdown(models.create("lenet_fc"))
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_a_misspelled_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'tpodown'"):
        reverso.tpodown  # noqa: B018
