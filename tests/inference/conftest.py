"""A tiny reidkit model (exports in well under a second) for the inference tests."""

import pytest
import torch

from reidkit.models import Backbone, ReIDModel, build_head

H, W = 64, 32


class TinyBackbone(Backbone):
    """Two conv-BN-ReLU stages (strides 2 and 2)."""

    out_channels = [8, 16]

    def __init__(self):
        super().__init__()
        self.s1 = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.s2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())

    def forward(self, x):
        a = self.s1(x)
        return [a, self.s2(a)]


def make_tiny(seed: int = 0) -> ReIDModel:
    torch.manual_seed(seed)
    model = ReIDModel(TinyBackbone(), build_head("fc_bn_relu", 16, 0, dim=12))
    for bn in (model.backbone.s1[1], model.backbone.s2[1], model.head.embed[1]):  # non-trivial statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def tiny():
    return make_tiny()
