"""Shared-bottom multi-task towers.

One bottom network shared by every task, then a small tower per task: the
classic hard parameter sharing of Caruana, "Multitask Learning", Machine
Learning 28 (1997), https://doi.org/10.1023/A:1007379606734.

Example
-------
>>> import torch
>>> towers = SharedBottom(in_dim=10, n_tasks=3, hidden=16, tower_hidden=8)
>>> [tuple(h.shape) for h in towers(torch.zeros(5, 10))]
[(5, 8), (5, 8), (5, 8)]
"""

from __future__ import annotations

import torch
from torch import nn

from online_models.towers.mlp import mlp


class SharedBottom(nn.Module):
    """``tower_k(bottom(x))`` for each task ``k``."""

    def __init__(self, in_dim: int, n_tasks: int, hidden: int, tower_hidden: int) -> None:
        super().__init__()
        self.bottom = mlp(in_dim, hidden)
        self.towers = nn.ModuleList(mlp(hidden, tower_hidden) for _ in range(n_tasks))
        self.out_dim = tower_hidden

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = self.bottom(x)
        return [tower(shared) for tower in self.towers]
