"""QC warnings: not a chest CT, contrast, thick slices, implausible HU, oblique."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct.io import assess_quality, read_ct
from hyperct.volume import CANONICAL_DIRECTION, CTVolume
from tests.support.dicom import chest_like_phantom, write_series


def _vol(ph, **metadata) -> CTVolume:
    return CTVolume(hu=ph.hu.astype(np.float32), spacing=ph.spacing, origin=ph.origin, metadata=metadata)


def codes(warnings) -> list[str]:
    return [w.code for w in warnings]


def test_a_plain_chest_gets_no_warning():
    vol = _vol(chest_like_phantom(), SliceThickness=1.0)
    assert assess_quality(vol) == []
    assert vol.warnings == []  # assess_quality does not modify the volume


def test_no_lungs_is_not_a_chest_ct():
    warnings = assess_quality(_vol(chest_like_phantom(lungs=False), SliceThickness=1.0))
    assert codes(warnings) == ["not_chest"]
    assert "lung" in warnings[0].message


def test_empty_volume_has_no_body():
    hu = np.full((20, 30, 30), -1000.0, np.float32)
    hu[0, 0, 0] = 0.0  # not constant
    assert "not_chest" in codes(assess_quality(CTVolume(hu=hu, spacing=(1, 1, 1), origin=(0, 0, 0))))


@pytest.mark.parametrize("pool_hu,expected", [(300.0, True), (45.0, False)])
def test_bright_blood_pool_means_contrast(pool_hu, expected):
    warnings = assess_quality(_vol(chest_like_phantom(blood_pool_hu=pool_hu), SliceThickness=1.0))
    assert ("contrast" in codes(warnings)) is expected
    if expected:
        assert "blood pool" in warnings[codes(warnings).index("contrast")].message


@pytest.mark.parametrize("agent,expected", [("Omnipaque 350", True), ("NONE", False), ("", False)])
def test_contrast_agent_in_header(agent, expected):
    warnings = assess_quality(_vol(chest_like_phantom(), SliceThickness=1.0, ContrastBolusAgent=agent))
    assert ("contrast" in codes(warnings)) is expected


def test_thick_slices_from_tag_or_spacing():
    assert "thick_slices" in codes(assess_quality(_vol(chest_like_phantom(), SliceThickness=6.0)))
    assert "thick_slices" not in codes(assess_quality(_vol(chest_like_phantom(), SliceThickness=5.0)))
    thick = chest_like_phantom(shape=(20, 80, 80), spacing=(7.5, 4.0, 4.0))
    (w,) = [w for w in assess_quality(_vol(thick)) if w.code == "thick_slices"]
    assert "7.50 mm" in w.message


def test_unrescaled_values_are_implausible():
    ph = chest_like_phantom()
    ph.hu = ph.hu + 1024.0  # stored values: air ~ 24
    warnings = assess_quality(_vol(ph, SliceThickness=1.0))
    assert codes(warnings) == ["implausible_hu"]
    assert "unrescaled" in warnings[0].message
    const = CTVolume(hu=np.zeros((20, 8, 8), np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    assert "implausible_hu" in codes(assess_quality(const))


def test_oblique_direction():
    a = np.radians(3.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    vol = _vol(chest_like_phantom(), SliceThickness=1.0)
    vol.direction = rot @ CANONICAL_DIRECTION
    (w,) = assess_quality(vol)
    assert w.code == "oblique_snapped" and "3.0 degrees" in w.message


def test_read_ct_carries_header_warnings(tmp_path):
    ph = chest_like_phantom(shape=(20, 80, 80), spacing=(6.0, 4.0, 4.0))
    write_series(ph, tmp_path, tags={"ContrastBolusAgent": "Iomeron 400"})
    vol = read_ct(tmp_path)
    assert codes(vol.warnings) == ["thick_slices", "contrast"]
    assert vol.metadata["ContrastBolusAgent"] == "Iomeron 400"


def test_read_ct_flags_missing_rescale(tmp_path):
    ph = chest_like_phantom(shape=(20, 80, 80), spacing=(2.0, 4.0, 4.0))

    def drop_rescale(ds, m):
        del ds.RescaleSlope, ds.RescaleIntercept

    write_series(ph, tmp_path, intercept=-1024.0, per_slice=drop_rescale)
    vol = read_ct(tmp_path)
    assert codes(vol.warnings) == ["implausible_hu"] and vol.metadata["RescaleMissing"] is True
    np.testing.assert_array_equal(vol.hu, ph.hu + 1024.0)


# --- lung air on real-looking chest crops and on an abdomen (issue 14) ------------------------


def _real_chest_crop() -> CTVolume:
    """pydicom's CT_small.dcm: a real 128 x 128 chest CT slice (84 mm field of view around a thoracic
    vertebra; both lungs are cut off at the image's upper corners), stacked into 20 slices with a
    small shift per slice so it is not a copy of one slice."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    stack = np.stack([np.roll(hu, (k % 3) - 1, axis=1) for k in range(20)])
    ps = float(ds.PixelSpacing[0])
    return CTVolume(hu=stack, spacing=(5.0, ps, ps), origin=(0, 0, 0), metadata={"SliceThickness": 5.0})


def _phantom_chest_crop() -> CTVolume:
    """The project's chest phantom (body, lungs, heart, spine, table) cut to a tight field of view:
    both lungs are cut off at the left and right image edges, the table stays below the back."""
    from hyperct.phantom import generate

    v = generate(3, {}, matrix=96, n_slices=40).volume
    return CTVolume(
        hu=v.hu[:, 24:96, 20:76].copy(), spacing=v.spacing, origin=(0, 0, 0), metadata={"SliceThickness": 1.0}
    )


def _abdomen(gas_fraction: float = 0.025, lung_base_slices: int = 4, seed: int = 0) -> CTVolume:
    """An abdomen CT: fat rim, liver, spine with discs, bowel-gas pockets (``gas_fraction`` of the
    body), lung bases in the top ``lung_base_slices`` of 40 slices, arms down beside the body and a
    table under it with an air gap."""
    rng = np.random.default_rng(seed)
    shape, spacing = (40, 120, 120), (5.0, 3.2, 3.2)
    nk, nj, ni = shape
    k, j, i = np.indices(shape, dtype=np.float32)
    cj, ci = 0.45 * nj, 0.5 * ni
    hu = np.full(shape, -1000.0, np.float32)
    body = ((j - cj) / (0.30 * nj)) ** 2 + ((i - ci) / (0.40 * ni)) ** 2 <= 1
    hu[body] = -100.0
    inner = ((j - cj) / (0.26 * nj)) ** 2 + ((i - ci) / (0.36 * ni)) ** 2 <= 1
    hu[inner] = 40.0
    liver = (
        inner
        & (((j - cj + 0.02 * nj) / (0.2 * nj)) ** 2 + ((i - ci + 0.17 * ni) / (0.15 * ni)) ** 2 <= 1)
        & (k < 0.6 * nk)
    )
    hu[liver] = 60.0
    spine = ((j - cj - 0.18 * nj) / (0.06 * nj)) ** 2 + ((i - ci) / (0.06 * ni)) ** 2 <= 1
    hu[spine] = 250.0
    hu[spine & ((k.astype(int) % 6) == 5)] = 90.0  # discs part the vertebrae
    core = ((j - cj - 0.18 * nj) / (0.045 * nj)) ** 2 + ((i - ci) / (0.045 * ni)) ** 2 <= 1
    hu[spine & ~core] = 800.0
    target, gas = gas_fraction * body.sum(), np.zeros(shape, bool)
    while gas.sum() < target:
        c = (
            rng.uniform(0, nk),
            rng.uniform(cj - 0.2 * nj, cj + 0.05 * nj),
            rng.uniform(ci - 0.28 * ni, ci + 0.28 * ni),
        )
        r = (rng.uniform(1.0, 2.5), rng.uniform(2.0, 5.0), rng.uniform(2.0, 6.0))
        pocket = ((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1
        gas |= pocket & inner & ~spine & ~liver
    hu[gas] = -1000.0
    for side in (-1, 1):
        lung = ((j - cj - 0.08 * nj) / (0.12 * nj)) ** 2 + ((i - ci - side * 0.2 * ni) / (0.1 * ni)) ** 2 <= 1
        hu[lung & (k < lung_base_slices) & inner & ~spine] = -850.0
        arm = ((j - cj) / (0.09 * nj)) ** 2 + ((i - ci - side * 0.47 * ni) / (0.045 * ni)) ** 2 <= 1
        hu[arm] = 40.0
    hu[(j > cj + 0.31 * nj + 2) & (j < cj + 0.31 * nj + 5) & (np.abs(i - ci) < 0.45 * ni)] = 150.0  # table
    hu += rng.normal(0, 12, shape).astype(np.float32)
    return CTVolume(hu=hu.round(), spacing=spacing, origin=(0, 0, 0), metadata={"SliceThickness": 5.0})


@pytest.mark.parametrize(
    "make", [_real_chest_crop, _phantom_chest_crop], ids=["pydicom_CT_small", "phantom_crop"]
)
def test_lung_air_passes_on_a_chest_crop_with_lungs_cut_at_the_edge(make):
    vol = make()
    # the lungs touch the image edge: a hole fill of the body would not see them
    edge = np.concatenate(
        [vol.hu[:, 0, :].ravel(), vol.hu[:, -1, :].ravel(), vol.hu[:, :, 0].ravel(), vol.hu[:, :, -1].ravel()]
    )
    assert np.mean(edge < -500) > 0.05
    assert assess_quality(vol) == []


@pytest.mark.parametrize("gas,bases", [(0.0, 0), (0.025, 4), (0.04, 6)])
def test_lung_air_fires_on_an_abdomen(gas, bases):
    warnings = assess_quality(_abdomen(gas, bases))
    assert codes(warnings) == ["not_chest"]
    assert "lung air" in warnings[0].message and "does not look like a chest CT" in warnings[0].message


def test_scope_warnings_and_constant_volumes():
    from hyperct.io.quality import ConstantVolumeError, check_scorable, out_of_scope
    from hyperct.volume import QCWarning

    ws = [QCWarning("thick_slices", "t"), QCWarning("not_chest", "n"), QCWarning("contrast", "c")]
    assert [w.code for w in out_of_scope(ws)] == ["not_chest", "contrast"]
    assert [w.code for w in out_of_scope([w.to_dict() for w in ws])] == ["not_chest", "contrast"]
    const = CTVolume(hu=np.full((20, 8, 8), 40.0, np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    with pytest.raises(ConstantVolumeError) as err:
        check_scorable(const, "scan.nii.gz")
    assert str(err.value).startswith(
        "constant volume (every voxel is 40 HU): there is no image to score (scan.nii.gz)"
    )
    check_scorable(_real_chest_crop())  # not constant: no error
