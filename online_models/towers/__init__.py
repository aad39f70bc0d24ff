"""Multi-task towers: shared input in, one hidden vector per task out.

Three ways to share a representation between the funnel tasks, each in its own
module with its paper: :class:`SharedBottom`, :class:`MMoE`, :class:`PLE`.
All take ``(B, in_dim)`` and return ``(B, n_tasks, out_dim)``: one hidden
vector per task, on which the multi-task net puts a logit head.

Example
-------
>>> import torch
>>> towers = build_towers("ple", in_dim=10, n_tasks=3, hidden=16, experts=2, tower_hidden=8)
>>> towers(torch.zeros(5, 10)).shape
torch.Size([5, 3, 8])
>>> towers.out_dim
8
"""

from __future__ import annotations

from torch import nn

from online_models.towers.mlp import mlp
from online_models.towers.mmoe import MMoE
from online_models.towers.ple import PLE
from online_models.towers.shared_bottom import SharedBottom

ARCHITECTURES = ("shared_bottom", "mmoe", "ple")

__all__ = ["ARCHITECTURES", "PLE", "MMoE", "SharedBottom", "build_towers", "mlp"]


def build_towers(
    architecture: str, in_dim: int, n_tasks: int, hidden: int, experts: int, tower_hidden: int
) -> nn.Module:
    """The towers named ``architecture`` (one of :data:`ARCHITECTURES`).

    ``hidden`` is the width of the shared bottom or of each expert, ``experts``
    the number of experts (MMoE: all shared; PLE: shared ones, plus one
    specific expert per task), ``tower_hidden`` the width of each task tower.
    """
    if architecture == "shared_bottom":
        return SharedBottom(in_dim, n_tasks, hidden, tower_hidden)
    if architecture == "mmoe":
        return MMoE(in_dim, n_tasks, hidden, experts, tower_hidden)
    if architecture == "ple":
        return PLE(in_dim, n_tasks, hidden, experts, 1, tower_hidden)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
