"""The HyperCT network: frozen DINOv3 ViT backbone + LoRA-generating hypernetwork + shared head."""

from hyperct.network.backbone import (
    BACKBONE_CONFIGS,
    backbone_config,
    build_backbone,
    load_backbone,
    save_backbone,
)
from hyperct.network.hyperct import HyperCT, HyperCTConfig
from hyperct.network.hypernet import HyperNetwork, LoRAFactors
from hyperct.network.lora import LORA_TARGETS, MultiTaskLoRALinear

__all__ = [
    "BACKBONE_CONFIGS",
    "LORA_TARGETS",
    "HyperCT",
    "HyperCTConfig",
    "HyperNetwork",
    "LoRAFactors",
    "MultiTaskLoRALinear",
    "backbone_config",
    "build_backbone",
    "load_backbone",
    "save_backbone",
]
