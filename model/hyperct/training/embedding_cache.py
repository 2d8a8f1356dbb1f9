"""The frozen input stage of each training volume, computed once and kept in memory.

With the backbone frozen, the patch embedding (HU windows, patch projection, CLS and register
tokens) of a volume is the same in every epoch and for every task: LoRA adapts only the
transformer blocks. ``EmbeddingCache`` computes it the first time a volume is drawn
(``HyperCT.embed_images``) and keeps it in RAM, so later epochs neither read and normalise the
volume again nor run the input stage (``train.embedding_cache``; about 0.9 MB per volume of the demo
backbone in float16, 1.8 MB in float32). The first epoch costs what it did without the cache.
"""

from __future__ import annotations

import os

import torch

from hyperct.errors import ConfigError
from hyperct.training.datasets import VolumeDataset

DTYPES = {"float16": torch.float16, "float32": torch.float32}


class EmbeddingCache:
    """Input-stage tokens ``(images, tokens, D)`` per volume index of ``data``, in ``dtype``."""

    def __init__(self, model: torch.nn.Module, data: VolumeDataset, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"embedding cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.model, self.data, self.dtype = model, data, DTYPES[dtype]
        self._tokens: dict[int, torch.Tensor] = {}

    def check_fits(self, budget_bytes: int | None = None) -> int:
        """The bytes the cache will hold once every volume is in it (the first volume's tokens
        times the dataset's size); a ``ConfigError`` when that is over ``budget_bytes`` (default:
        half of this machine's memory, shared by the processes torchrun started on it), before any
        training time is spent."""
        first = self._tokens_of(0)
        need = first.numel() * first.element_size() * len(self.data)
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        budget = budget_bytes if budget_bytes is not None else physical_memory() // 2 // local
        if budget and need > budget:
            raise ConfigError(
                f"train.embedding_cache would hold {len(self.data)} volumes x "
                f"{need / len(self.data) / 2**20:.1f} MB = {need / 2**30:.1f} GB in memory, more than "
                f"the {budget / 2**30:.1f} GB it may use (half of this machine's memory per process)",
                hint="set train.embedding_cache: off (or float16 instead of float32)",
            )
        return need

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tokens.values())

    def _tokens_of(self, idx: int) -> torch.Tensor:
        tokens = self._tokens.get(idx)
        if tokens is None:
            pixels = self.data.pixel_values(idx)
            with torch.no_grad():
                tokens = self.model.embed_images(pixels[None])[0]
            tokens = tokens.detach().to("cpu", self.dtype).contiguous()
            self._tokens[idx] = tokens
        return tokens

    def batch(self, indices: torch.Tensor | list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """``(len(indices), images, tokens, D)`` in the model's dtype on ``device``, for
        ``model(tokens, tasks, embedded=True)``."""
        rows = [self._tokens_of(int(i)) for i in torch.as_tensor(indices).reshape(-1).tolist()]
        weight = self.model.backbone.embeddings.patch_embeddings.weight
        return torch.stack(rows).to(device=device, dtype=weight.dtype)


def physical_memory() -> int:
    """This machine's memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0
