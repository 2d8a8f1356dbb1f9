"""The HyperCT model: frozen DINOv3 ViT backbone + LoRA-generating hypernetwork + shared head."""

from hyperct.model.backbone import (
    BACKBONE_CONFIGS,
    backbone_config,
    build_backbone,
    load_backbone,
    save_backbone,
)
from hyperct.model.hypernet import HyperNetwork, LoRAFactors
from hyperct.model.lora import LORA_TARGETS, MultiTaskLoRALinear
from hyperct.model.network import HyperCT, HyperCTConfig

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
