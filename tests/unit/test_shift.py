"""Shift consistency (docs/methods/antialias.md, section 4) on any model, against oracles."""

import torch
from torch import nn

import reverso


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2)


class CornerParity(nn.Module):
    """Class 0 if the crop's top-left pixel is brighter than its right neighbour."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 1]], dim=1)


def checkerboard(n, size):
    i = torch.arange(size)
    board = ((i[:, None] + i[None, :]) % 2).float()
    return board.expand(n, 1, size, size).clone()


def test_a_shift_invariant_model_is_fully_consistent():
    assert reverso.shift_consistency(Constant(), torch.rand(8, 3, 40, 40), max_shift=8) == 1.0


def test_a_model_reading_the_crop_parity_agrees_half_the_time():
    # the class flips with the parity of dy + dx; two random offsets share it with probability 1/2
    images = checkerboard(100, 40)
    score = reverso.shift_consistency(CornerParity(), images, max_shift=8, pairs=20, seed=1)
    assert abs(score - 0.5) < 0.05  # 2,000 pairs: 5 standard errors is 0.056


def test_consistency_of_a_top_down_net(converted):
    td = converted("LeNetFC", (1, 28, 28))[1].eval()
    images = torch.rand(6, 1, 36, 36)
    hard = reverso.shift_consistency(td, images, max_shift=8, pairs=2)
    soft = reverso.shift_consistency(td, images, max_shift=8, pairs=2, soft=True)
    assert 0.0 <= hard <= 1.0 and 0.0 < soft <= 1.0
