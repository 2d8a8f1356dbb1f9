from __future__ import annotations

import pytest
import torch

from hyperct.network import HyperCT, HyperCTConfig
from hyperct.network.backbone import BACKBONE_CONFIGS

# Same structure as the real backbones, tiny: fast enough for unit tests.
TINY_BACKBONE = dict(
    BACKBONE_CONFIGS["demo"], hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2
)


def tiny_model(seed: int = 0, *, random_lora: bool = True, rank: int = 4) -> HyperCT:
    torch.manual_seed(seed)
    model = HyperCT(
        HyperCTConfig(
            backbone=dict(TINY_BACKBONE), task_dim=16, pos_dim=8, hyper_hidden=16, rank=rank, alpha=rank
        )
    )
    if random_lora:
        # Non-zero B (trained-like) so every task has its own, clearly different update.
        with torch.no_grad():
            for kind, head in model.hypernet.heads.items():
                n_a = model.hypernet.rank * model.hypernet.dims[kind][0]
                head.weight[n_a:].normal_(0, 0.2)
                head.bias[n_a:].normal_(0, 0.2)
    return model.eval()


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def pixels():
    g = torch.Generator().manual_seed(1)
    # 2 volumes x 3 images x 3 x 48 x 48 (3x3 patches): the model handles any number of images.
    return torch.randn(2, 3, 3, 48, 48, generator=g)
