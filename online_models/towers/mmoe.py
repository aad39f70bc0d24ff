"""Multi-gate Mixture-of-Experts (MMoE).

Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018,
https://doi.org/10.1145/3219819.3220007. Every task mixes the same experts with
a softmax gate of its own, so tasks share what helps them and no more.

The experts, the gates and the task towers are each evaluated as one batched
matrix product (weights stacked along an expert or task axis): the same model
as a loop over ``nn.Linear`` modules, in a handful of operations, which is
what matters for the small batches of online learning on a CPU.

Example
-------
>>> import torch
>>> towers = MMoE(in_dim=10, n_tasks=3, hidden=16, experts=4, tower_hidden=8)
>>> towers(torch.zeros(5, 10)).shape
torch.Size([5, 3, 8])
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MMoE(nn.Module):
    """``tower_k(sum_e softmax(gate_k(x))_e * expert_e(x))`` for each task ``k``."""

    def __init__(
        self, in_dim: int, n_tasks: int, hidden: int, experts: int, tower_hidden: int
    ) -> None:
        super().__init__()
        self.experts, self.hidden, self.n_tasks = experts, hidden, n_tasks
        self.expert_layer = nn.Linear(in_dim, experts * hidden)  # all experts side by side
        self.gate_layer = nn.Linear(in_dim, n_tasks * experts)  # all gates side by side
        self.tower_weight = nn.Parameter(torch.empty(n_tasks, hidden, tower_hidden))
        self.tower_bias = nn.Parameter(torch.empty(n_tasks, 1, tower_hidden))
        bound = 1 / math.sqrt(hidden)  # nn.Linear's default init, per task
        nn.init.uniform_(self.tower_weight, -bound, bound)
        nn.init.uniform_(self.tower_bias, -bound, bound)
        self.out_dim = tower_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        expert_out = torch.relu(self.expert_layer(x)).view(batch, self.experts, self.hidden)
        gates = torch.softmax(self.gate_layer(x).view(batch, self.n_tasks, self.experts), dim=-1)
        mixed = torch.bmm(gates, expert_out)  # (B, tasks, hidden): each task's mixture
        towers = torch.relu(
            torch.baddbmm(self.tower_bias, mixed.transpose(0, 1), self.tower_weight)
        )
        return towers.transpose(0, 1)  # (B, tasks, tower_hidden)
