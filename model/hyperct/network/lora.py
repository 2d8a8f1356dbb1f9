"""Batched multi-task LoRA linear layer.

One forward pass scores several tasks at once. The rows of the input are split into ``G`` equal,
contiguous groups (e.g. one group per task, each holding all volumes x 55 images of that task);
group ``g`` gets its own low-rank update. The frozen base weight is applied once to the whole
batch; the low-rank terms are two batched matmuls over the groups:

    y = x W^T + b + (alpha / r) * (x A_g^T) B_g^T          for the rows x of group g

(PyTorch convention: W is d_out x d_in, A_g is r x d_in, B_g is d_out x r; delta W_g = (alpha/r) B_g A_g.)
No forward hooks and no host synchronisation: the factors are handed over through a shared
``LoRAState`` that the HyperCT model fills before it runs the backbone. In inference the model hands
over views of its factor cache, already contiguous per layer and in the dtype the matmuls run in, so
the layer reads them as they are (no per-forward copy or cast of the factors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Target module types: attribute path inside a DINOv3 ViT layer.
LORA_TARGETS: dict[str, str] = {
    "q_proj": "attention.q_proj",
    "k_proj": "attention.k_proj",
    "v_proj": "attention.v_proj",
    "o_proj": "attention.o_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


@dataclass
class GroupFactors:
    """Low-rank factors of every target module for ``G`` row groups, transposed for bmm.

    ``at[kind]`` has shape (L, G, d_in, r) and ``bt[kind]`` (L, G, r, d_out), so that the update of
    layer ``l`` for group ``g`` is ``x @ at[kind][l, g] @ bt[kind][l, g]`` (times ``scale``).
    """

    at: dict[str, torch.Tensor]
    bt: dict[str, torch.Tensor]
    scale: float

    @property
    def n_groups(self) -> int:
        return next(iter(self.at.values())).shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.at.values())).dtype

    def select(self, index: torch.Tensor) -> GroupFactors:
        """Factors for the groups ``index`` (indices into this object's groups): gathered copies."""
        return GroupFactors(
            {k: v.index_select(1, index) for k, v in self.at.items()},
            {k: v.index_select(1, index) for k, v in self.bt.items()},
            self.scale,
        )

    def narrow(self, start: int, length: int) -> GroupFactors:
        """Groups ``start .. start + length - 1`` as views (no copy). On factors stored contiguous,
        every layer's slice ``at[kind][l]`` of the result is itself a contiguous (G, d_in, r) block."""
        return GroupFactors(
            {k: v.narrow(1, start, length) for k, v in self.at.items()},
            {k: v.narrow(1, start, length) for k, v in self.bt.items()},
            self.scale,
        )

    def to(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> GroupFactors:
        return GroupFactors(
            {k: v.to(device=device, dtype=dtype) for k, v in self.at.items()},
            {k: v.to(device=device, dtype=dtype) for k, v in self.bt.items()},
            self.scale,
        )


class LoRAState:
    """What the wrapped linears read during one backbone pass (``None`` = plain backbone)."""

    def __init__(self) -> None:
        self.current: GroupFactors | None = None


class MultiTaskLoRALinear(nn.Linear):
    """A ``nn.Linear`` (same parameters, same state-dict names) plus grouped low-rank updates."""

    def __init__(self, base: nn.Linear, state: LoRAState, layer: int, kind: str):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.state = state
        self.layer = layer
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        factors = self.state.current
        if factors is None:
            return out
        at = factors.at[self.kind][self.layer]  # (G, d_in, r)
        bt = factors.bt[self.kind][self.layer]  # (G, r, d_out)
        groups = at.shape[0]
        xs = x.reshape(groups, -1, self.in_features)
        if not torch.is_autocast_enabled(x.device.type):
            # Under autocast the matmuls cast for themselves (HyperCT hands factors over already in
            # the autocast dtype); otherwise match the activations (a no-op for the cached factors).
            at = at.to(xs.dtype)
        low = torch.bmm(xs, at)
        if not torch.is_autocast_enabled(x.device.type):
            bt = bt.to(low.dtype)
        out = torch.baddbmm(out.reshape(groups, -1, self.out_features), low, bt, alpha=factors.scale)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer={self.layer}, kind={self.kind}"


def wrap_backbone(
    layers: nn.ModuleList, state: LoRAState, kinds: list[str]
) -> dict[tuple[int, str], nn.Linear]:
    """Replace the target linears of every layer by ``MultiTaskLoRALinear`` (in place)."""
    wrapped: dict[tuple[int, str], nn.Linear] = {}
    for li, layer in enumerate(layers):
        for kind in kinds:
            parent_path, attr = LORA_TARGETS[kind].rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            base = getattr(parent, attr)
            if not isinstance(base, MultiTaskLoRALinear):
                base = MultiTaskLoRALinear(base, state, li, kind)
                setattr(parent, attr, base)
            wrapped[(li, kind)] = base
    return wrapped
