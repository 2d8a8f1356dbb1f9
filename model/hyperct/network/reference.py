"""Reference implementations of HyperCT inference, for benchmarks and equivalence tests.

Both compute exactly what ``HyperCT.forward`` computes (same weights, same logits up to float
rounding); they differ only in HOW, so the benchmark compares like with like:

``AuthorsStyleHyperCT``: the method as the paper describes it, written here from that description
(not from the authors' code): a plain DINOv3 backbone whose target ``nn.Linear`` modules get a
forward hook that adds the task's LoRA term ``(alpha/r) (x A^T) B^T``; the hypernetwork generates
each module's A and B inside its hook (task embedding + module indicator -> MLP -> head); the
hook ends with a host synchronisation (``torch.cuda.synchronize``; on a CPU every op is already
synchronous); one backbone forward per task; fp32.

``MergedPerTask``: the plain per-task baseline without hooks: for each task, W + (alpha/r) B A is
written into a plain backbone's target weights, then one ordinary forward.

Neither is used by the product; ``HyperCT.forward`` scores all tasks in one batched pass.
"""

from __future__ import annotations

import torch
from torch import nn

from hyperct.network.backbone import build_backbone, encoder_layers
from hyperct.network.hyperct import HyperCT
from hyperct.network.lora import LORA_TARGETS


def _plain_backbone(model: HyperCT, *, copy_targets: bool) -> tuple[nn.Module, dict]:
    """A plain transformers backbone sharing ``model``'s weights (target weights copied if asked)."""
    with torch.device("meta"):
        plain = build_backbone(model.backbone.config)
    state = {k: v for k, v in model.backbone.state_dict().items()}
    plain.load_state_dict(state, assign=True, strict=False)
    # non-persistent buffers (RoPE inv_freq) are not in the state dict: take the model's
    for name, buf in model.backbone.named_buffers():
        owner, _, attr = name.rpartition(".")
        plain.get_submodule(owner).register_buffer(attr, buf, persistent=False)
    plain.eval()
    targets = {}
    for li, layer in enumerate(encoder_layers(plain)):
        for kind in model.config.targets:
            parent_path, attr = LORA_TARGETS[kind].rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            lin = getattr(parent, attr)
            if type(lin) is not nn.Linear:  # the wrapped class came through assign: make it plain
                new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
                new.weight, new.bias = lin.weight, lin.bias
                setattr(parent, attr, new)
                lin = new
            if copy_targets:
                lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
            targets[(li, kind)] = lin
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain, targets


def _cls_logits(backbone: nn.Module, head: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    b, n_img = pixel_values.shape[:2]
    flat = pixel_values.reshape(b * n_img, *pixel_values.shape[2:])
    cls = backbone(pixel_values=flat).last_hidden_state[:, 0]
    return head(cls.reshape(b, n_img, -1).mean(dim=1)).squeeze(-1)


class AuthorsStyleHyperCT:
    """Per-task forwards with LoRA added by forward hooks, factors generated per module (fp32)."""

    def __init__(self, model: HyperCT, *, sync: bool = True):
        self.model = model
        self.hypernet = model.hypernet
        self.head = model.head
        self.backbone, self.targets = _plain_backbone(model, copy_targets=False)
        self.sync = sync
        self.kind_index = {k: i for i, k in enumerate(self.hypernet.kinds)}

    def module_factors(self, task: int, layer: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: r x d_in, B: d_out x r) of one module for one task, from the hypernetwork."""
        hn = self.hypernet
        dev = hn.task_embeddings.device
        e = hn.task_embeddings[task]
        pos = torch.cat(
            [
                hn.layer_embedding(torch.tensor(layer, device=dev)),
                hn.type_embedding(torch.tensor(self.kind_index[kind], device=dev)),
            ]
        )
        out = hn.heads[kind](hn.mlp(torch.cat([e, pos])))
        d_in, d_out = hn.dims[kind]
        r = hn.rank
        return out[: r * d_in].reshape(r, d_in), out[r * d_in :].reshape(d_out, r)

    def _hook(self, task: int, layer: int, kind: str):
        scale = self.hypernet.scale

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            a, b = self.module_factors(task, layer, kind)
            out = output + scale * ((inputs[0] @ a.T) @ b.T)
            if self.sync and out.is_cuda:
                torch.cuda.synchronize(out.device)  # host sync per module
            return out

        return hook

    def task_logits(self, pixel_values: torch.Tensor, task: int) -> torch.Tensor:
        """Logits (B,) of one task: hooks on, one forward, hooks off."""
        handles = [
            lin.register_forward_hook(self._hook(task, li, kind)) for (li, kind), lin in self.targets.items()
        ]
        try:
            return _cls_logits(self.backbone, self.head, pixel_values)
        finally:
            for h in handles:
                h.remove()

    def __call__(self, pixel_values: torch.Tensor, tasks: list[int] | None = None) -> torch.Tensor:
        tasks = list(range(self.model.config.n_tasks)) if tasks is None else [int(t) for t in tasks]
        return torch.stack([self.task_logits(pixel_values, k) for k in tasks], dim=1)


class MergedPerTask:
    """Per-task forwards of a plain backbone whose target weights hold W + (alpha/r) B A."""

    def __init__(self, model: HyperCT):
        self.model = model
        self.head = model.head
        self.backbone, self.targets = _plain_backbone(model, copy_targets=True)
        self.base = {key: model._wrapped[key].weight for key in self.targets}  # W, shared, read-only

    @torch.no_grad()
    def merge(self, factors, task_pos: int) -> None:
        """Write W + (alpha/r) B A of the task at ``task_pos`` of ``factors`` into the target weights."""
        for (li, kind), lin in self.targets.items():
            torch.addmm(
                self.base[(li, kind)],
                factors.b[kind][task_pos, li],
                factors.a[kind][task_pos, li],
                alpha=factors.scale,
                out=lin.weight,
            )

    def __call__(
        self, pixel_values: torch.Tensor, tasks: list[int] | None = None, factors=None
    ) -> torch.Tensor:
        tasks = list(range(self.model.config.n_tasks)) if tasks is None else [int(t) for t in tasks]
        if factors is None:  # one generation for all tasks (as the product caches them)
            factors = self.model.lora_factors(torch.tensor(tasks))
        outs = []
        for pos, _ in enumerate(tasks):
            self.merge(factors, pos)
            outs.append(_cls_logits(self.backbone, self.head, pixel_values))
        return torch.stack(outs, dim=1)
