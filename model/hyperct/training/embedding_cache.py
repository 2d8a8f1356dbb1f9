"""The frozen input stage of each training volume, computed once and kept in memory.

With the backbone frozen, the patch embedding (HU windows, patch projection, CLS and register
tokens) of a volume is the same in every epoch and for every task: LoRA adapts only the
transformer blocks. ``EmbeddingCache`` computes it the first time a volume is drawn
(``HyperCT.embed_images``) and keeps it in RAM, so later epochs neither read and normalise the
volume again nor run the input stage (``train.embedding_cache``; about 0.9 MB per volume of the demo
backbone in float16, 1.8 MB in float32). The first epoch costs what it did without the cache.
"""

from __future__ import annotations

import torch

from hyperct.training.datasets import VolumeDataset

DTYPES = {"float16": torch.float16, "float32": torch.float32}


class EmbeddingCache:
    """Input-stage tokens ``(images, tokens, D)`` per volume index of ``data``, in ``dtype``."""

    def __init__(self, model: torch.nn.Module, data: VolumeDataset, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"embedding cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.model, self.data, self.dtype = model, data, DTYPES[dtype]
        self._tokens: dict[int, torch.Tensor] = {}
        self.computed = 0  # volumes embedded so far (each once)

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
            self.computed += 1
        return tokens

    def batch(self, indices: torch.Tensor | list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """``(len(indices), images, tokens, D)`` in the model's dtype on ``device``, for
        ``model(tokens, tasks, embedded=True)``."""
        rows = [self._tokens_of(int(i)) for i in torch.as_tensor(indices).reshape(-1).tolist()]
        weight = self.model.backbone.embeddings.patch_embeddings.weight
        return torch.stack(rows).to(device=device, dtype=weight.dtype)
