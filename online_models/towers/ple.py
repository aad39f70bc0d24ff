"""Progressive Layered Extraction (PLE).

Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
https://doi.org/10.1145/3383313.3412236. Each extraction layer (a Customized
Gate Control, CGC) has experts shared by all tasks and experts specific to one
task; a task's gate mixes its own experts with the shared ones, which keeps the
tasks from pulling one shared representation apart (the "seesaw"). Stacked
layers also carry a shared gate over all experts that feeds the next layer.

Example
-------
>>> import torch
>>> towers = PLE(in_dim=10, n_tasks=3, hidden=16, shared_experts=2, task_experts=1,
...              tower_hidden=8, levels=2)
>>> towers(torch.zeros(5, 10)).shape
torch.Size([5, 3, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from online_models.towers.mlp import mlp


class ExtractionLayer(nn.Module):
    """One CGC layer: task and shared experts, a gate per task (and a shared one)."""

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        hidden: int,
        shared_experts: int,
        task_experts: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.shared = nn.ModuleList(mlp(in_dim, hidden) for _ in range(shared_experts))
        self.specific = nn.ModuleList(
            nn.ModuleList(mlp(in_dim, hidden) for _ in range(task_experts)) for _ in range(n_tasks)
        )
        own = shared_experts + task_experts
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, own) for _ in range(n_tasks))
        every = shared_experts + n_tasks * task_experts
        self.shared_gate = nn.Linear(in_dim, every) if shared_gate else None

    def forward(
        self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        shared_out = [expert(shared_input) for expert in self.shared]
        task_outputs, all_specific = [], []
        for experts, gate, x in zip(self.specific, self.task_gates, task_inputs, strict=True):
            specific_out = [expert(x) for expert in experts]
            all_specific += specific_out
            task_outputs.append(_mix(gate(x), specific_out + shared_out))
        if self.shared_gate is None:
            return task_outputs, None
        return task_outputs, _mix(self.shared_gate(shared_input), all_specific + shared_out)


def _mix(gate_logits: torch.Tensor, expert_outputs: list[torch.Tensor]) -> torch.Tensor:
    weights = torch.softmax(gate_logits, dim=-1).unsqueeze(-1)  # (B, E, 1)
    return (weights * torch.stack(expert_outputs, dim=1)).sum(dim=1)


class PLE(nn.Module):
    """``levels`` extraction layers, then a tower per task."""

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        hidden: int,
        shared_experts: int,
        task_experts: int,
        tower_hidden: int,
        levels: int = 1,
    ) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.layers = nn.ModuleList(
            ExtractionLayer(
                in_dim if level == 0 else hidden,
                n_tasks,
                hidden,
                shared_experts,
                task_experts,
                shared_gate=level < levels - 1,
            )
            for level in range(levels)
        )
        self.towers = nn.ModuleList(mlp(hidden, tower_hidden) for _ in range(n_tasks))
        self.out_dim = tower_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task_inputs, shared_input = [x] * self.n_tasks, x
        for layer in self.layers:
            task_inputs, shared_input = layer(task_inputs, shared_input)
        return torch.stack(
            [tower(h) for tower, h in zip(self.towers, task_inputs, strict=True)], dim=1
        )
