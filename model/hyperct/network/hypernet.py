"""The hypernetwork: task embedding + module indicator -> LoRA factors for every target module.

As in the paper (Sec. 3, 4.2): learnable task embeddings e_k (K x 512); a learned module indicator
phi_pos(m) made of a layer-index embedding and a module-type embedding (d_p = 64 together); a
3-layer MLP with hidden size d_h = 64; one linear head per module type emitting the flattened LoRA
A (r x d_in) and B (d_out x r). The B part of each head starts at zero, so an untrained HyperCT is
exactly the frozen backbone for every task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hyperct.network.lora import GroupFactors


@dataclass
class LoRAFactors:
    """Factors of every target module for a list of tasks (standard orientation).

    ``a[kind]``: (T, L, r, d_in); ``b[kind]``: (T, L, d_out, r). ``delta_w`` = scale * B @ A.
    """

    tasks: torch.Tensor
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    scale: float

    def grouped(self) -> GroupFactors:
        """One group per task, transposed for the batched LoRA linear."""
        return GroupFactors(
            {k: v.permute(1, 0, 3, 2) for k, v in self.a.items()},
            {k: v.permute(1, 0, 3, 2) for k, v in self.b.items()},
            self.scale,
        )

    def delta_w(self, kind: str, layer: int, task_pos: int) -> torch.Tensor:
        """The dense update (d_out x d_in) of one module for the task at position ``task_pos``."""
        return self.scale * self.b[kind][task_pos, layer] @ self.a[kind][task_pos, layer]


class HyperNetwork(nn.Module):
    def __init__(
        self,
        n_tasks: int,
        n_layers: int,
        dims: dict[str, tuple[int, int]],
        *,
        task_dim: int = 512,
        pos_dim: int = 64,
        hidden: int = 64,
        rank: int = 16,
        alpha: float = 16.0,
    ):
        super().__init__()
        if pos_dim % 2:
            raise ValueError("pos_dim must be even (layer and module-type halves)")
        self.kinds = list(dims)
        self.dims = dict(dims)
        self.n_tasks, self.n_layers, self.rank, self.alpha = n_tasks, n_layers, rank, float(alpha)
        self.task_embeddings = nn.Parameter(torch.randn(n_tasks, task_dim))
        self.layer_embedding = nn.Embedding(n_layers, pos_dim // 2)
        self.type_embedding = nn.Embedding(len(self.kinds), pos_dim // 2)
        self.mlp = nn.Sequential(
            nn.Linear(task_dim + pos_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict(
            {k: nn.Linear(hidden, rank * (d_in + d_out)) for k, (d_in, d_out) in dims.items()}
        )
        self.reset_heads()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def reset_heads(self) -> None:
        """A part: small random (so gradients reach B); B part: exactly zero."""
        with torch.no_grad():
            for kind, head in self.heads.items():
                n_a = self.rank * self.dims[kind][0]
                nn.init.normal_(head.weight[:n_a], std=0.01)
                nn.init.normal_(head.bias[:n_a], std=0.01)
                head.weight[n_a:].zero_()
                head.bias[n_a:].zero_()

    def module_inputs(self, tasks: torch.Tensor) -> torch.Tensor:
        """Hypernetwork inputs for every (task, module type, layer): (T, n_kinds, L, task_dim + pos_dim)."""
        dev = self.task_embeddings.device
        e = self.task_embeddings.index_select(0, tasks.to(dev))  # (T, E)
        lay = self.layer_embedding(torch.arange(self.n_layers, device=dev))  # (L, P/2)
        typ = self.type_embedding(torch.arange(len(self.kinds), device=dev))  # (K, P/2)
        t, k, L = e.shape[0], typ.shape[0], lay.shape[0]
        pos = torch.cat([lay[None].expand(k, L, -1), typ[:, None].expand(k, L, -1)], dim=-1)  # (K, L, P)
        return torch.cat([e[:, None, None].expand(t, k, L, -1), pos[None].expand(t, k, L, -1)], dim=-1)

    def forward(self, tasks: torch.Tensor) -> LoRAFactors:
        h = self.mlp(self.module_inputs(tasks))  # (T, K, L, H)
        r = self.rank
        a, b = {}, {}
        for ki, kind in enumerate(self.kinds):
            d_in, d_out = self.dims[kind]
            out = self.heads[kind](h[:, ki])  # (T, L, r*(d_in+d_out))
            a[kind] = out[..., : r * d_in].reshape(*out.shape[:2], r, d_in)
            b[kind] = out[..., r * d_in :].reshape(*out.shape[:2], d_out, r)
        return LoRAFactors(tasks, a, b, self.scale)
