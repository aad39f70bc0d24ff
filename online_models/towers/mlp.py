"""The building block of every tower: Linear + ReLU layers.

Example
-------
>>> import torch
>>> mlp(4, 8, 2)(torch.zeros(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, *widths: int) -> nn.Sequential:
    """``Linear -> ReLU`` for each width in turn."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    return nn.Sequential(*layers)
