"""Volume -> model input, exactly as the paper (Sec. 4.2), with the map back to the CT's voxels.

1. resample the canonical HU volume (k, j, i) to Z=165 slices x H=144 x W=144 (in-plane bilinear and
   through-plane linear interpolation, both anti-aliased when shrinking; pixel-centre aligned);
2. clip HU to [-1000, 1000] and map to [0, 1];
3. every 3 consecutive slices form one RGB image: 55 non-overlapping triplets;
4. ImageNet mean/std normalisation.

The mapping is a pure per-axis scaling with half-pixel alignment, so a map on the model grid
(165 x 144 x 144, or the 55 x 9 x 9 token grid) goes back to the source grid by the inverse
scaling (``to_source_grid``); ``model_slice_to_source`` gives each model slice's position in the
source volume's slice index space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hyperct.volume import CTVolume

N_SLICES = 165
IMAGE_SIZE = 144
N_IMAGES = N_SLICES // 3
HU_MIN, HU_MAX = -1000.0, 1000.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessed:
    """Model input for one volume and what is needed to map results back."""

    pixel_values: torch.Tensor  # (55, 3, 144, 144) float32, ImageNet-normalised
    source_shape: tuple[int, int, int]  # (k, j, i) of the canonical HU volume

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return (N_SLICES, IMAGE_SIZE, IMAGE_SIZE)

    def model_slice_to_source(self) -> np.ndarray:
        """For each of the 165 model slices, its (fractional) slice index in the source volume."""
        return model_to_source_coords(N_SLICES, self.source_shape[0])

    def image_slices(self, image: int) -> np.ndarray:
        """Source slice positions of the 3 model slices that make RGB image ``image`` (0..54)."""
        return self.model_slice_to_source()[3 * image : 3 * image + 3]

    def to_source_grid(self, model_map: torch.Tensor | np.ndarray) -> np.ndarray:
        """Resample a (165, 144, 144) or (55, h, w) map onto the source volume's voxel grid."""
        return map_to_grid(model_map, self.source_shape)


def model_to_source_coords(n_model: int, n_source: int) -> np.ndarray:
    """Half-pixel-aligned positions of ``n_model`` samples in an axis of length ``n_source``."""
    return (np.arange(n_model) + 0.5) * (n_source / n_model) - 0.5


def _resize_axis_pair(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two axes of (N, C, A, B); anti-aliased when shrinking."""
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resample_hu(
    hu: np.ndarray | torch.Tensor, shape: tuple[int, int, int] = (N_SLICES, IMAGE_SIZE, IMAGE_SIZE)
) -> torch.Tensor:
    """Resample a (k, j, i) HU volume to ``shape`` (float32 tensor)."""
    vol = torch.as_tensor(np.ascontiguousarray(hu) if isinstance(hu, np.ndarray) else hu, dtype=torch.float32)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(vol.shape)}")
    z, y, x = vol.shape
    nz, ny, nx = shape
    # in-plane: slices as a batch of 2-D images
    inplane = _resize_axis_pair(vol[:, None], (ny, nx))[:, 0]  # (z, ny, nx)
    if z == nz:
        return inplane.contiguous()
    # through-plane: treat (z, ny*nx) as one 2-D image and resize only its first axis
    cols = inplane.reshape(1, 1, z, ny * nx)
    return _resize_axis_pair(cols, (nz, ny * nx)).reshape(nz, ny, nx).contiguous()


def normalise(model_hu: torch.Tensor) -> torch.Tensor:
    """(3n, H, W) HU (165 slices for a volume) -> (n, 3, H, W) ImageNet-normalised RGB triplets."""
    unit = ((model_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).to(torch.float32)
    rgb = unit.reshape(-1, 3, *unit.shape[1:])
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (rgb - mean) / std


def preprocess(volume: CTVolume | np.ndarray) -> Preprocessed:
    """A canonical CT volume (or a (k, j, i) HU array) -> model input + mapping back."""
    hu = volume.hu if isinstance(volume, CTVolume) else np.asarray(volume)
    model_hu = resample_hu(hu)
    return Preprocessed(pixel_values=normalise(model_hu), source_shape=tuple(int(n) for n in hu.shape))


def model_grid_hu(pixel_values: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: (55, 3, H, W) -> (165, H, W) HU clipped to [-1000, 1000]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    unit = pixel_values * std + mean
    return (unit * (HU_MAX - HU_MIN) + HU_MIN).reshape(-1, *pixel_values.shape[-2:])


def map_to_grid(model_map: torch.Tensor | np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resample a map on the model grid ((165|55, h, w), half-pixel aligned) to ``shape`` (float32).

    A (55, h, w) map (one value per RGB triplet) is first spread over its 3 model slices, so that
    each source slice gets the value of the triplet it fell into.
    """
    m = torch.as_tensor(
        np.asarray(model_map, dtype=np.float32) if isinstance(model_map, np.ndarray) else model_map
    )
    m = m.detach().to(torch.float32).cpu()
    if m.ndim != 3:
        raise ValueError(f"expected a 3-D map, got shape {tuple(m.shape)}")
    if m.shape[0] == N_IMAGES:
        m = m.repeat_interleave(3, dim=0)
    out = F.interpolate(m[None, None], size=tuple(shape), mode="trilinear", align_corners=False)
    return out[0, 0].numpy()
