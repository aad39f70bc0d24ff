"""Shared-bottom multi-task towers.

One bottom network shared by every task, then a small tower per task: the
classic hard parameter sharing of Caruana, "Multitask Learning", Machine
Learning 28 (1997), https://doi.org/10.1023/A:1007379606734.

Example
-------
>>> import torch
>>> towers = SharedBottom(in_dim=10, n_tasks=3, hidden=16, tower_hidden=8)
>>> towers(torch.zeros(5, 10)).shape
torch.Size([5, 3, 8])
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
        self.towers = mlp(hidden, n_tasks * tower_hidden)  # every task's tower side by side
        self.n_tasks, self.out_dim = n_tasks, tower_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.towers(self.bottom(x)).view(x.shape[0], self.n_tasks, self.out_dim)
