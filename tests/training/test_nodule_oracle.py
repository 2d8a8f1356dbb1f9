"""benchmarks/nodule_blob_oracle.py: its blob filter scores a nodule-sized sphere in the lungs and not a
vessel or a wall when it sees across slices (the whole volume, or one RGB image's 3 slices); one
slice alone cannot tell a vessel running through the slices from a nodule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.benchmarks import load_benchmark


def _lung(tube=False, sphere=False, wall=False):
    z, y, x = np.mgrid[0:165, 0:40, 0:40].astype(np.float32)
    hu = np.full(z.shape, -880.0, dtype=np.float32)
    if tube:  # a vessel running through every slice
        hu[(y - 12) ** 2 + (x - 12) ** 2 <= 2.5**2] = 40.0
    if wall:  # a flat sheet of soft tissue (a fissure, a pleural edge)
        hu[:, :, 30:33] = 40.0
    if sphere:  # a nodule of radius 3 voxels (in-plane; slices are counted at 0.7x)
        hu[((z - 80) * 0.7) ** 2 + (y - 26) ** 2 + (x - 14) ** 2 <= 3.0**2] = 40.0
    return hu


def test_the_blob_filter_scores_a_nodule_and_not_a_vessel_or_a_wall():
    mod = load_benchmark("nodule_blob_oracle")
    background = mod.volume_scores(_lung(tube=True, wall=True))
    nodule = mod.volume_scores(_lung(tube=True, wall=True, sphere=True))
    for view in ("volume", "triplet"):
        key = f"{view}_2.5"
        assert background[key] < 1.0 < 0.5 * nodule[key], (key, nodule[key], background[key])
    vessel, wall = mod.volume_scores(_lung(tube=True)), mod.volume_scores(_lung(wall=True))
    assert vessel["slice_2.5"] > 0.8 * nodule["slice_2.5"]  # in one slice a vessel is a blob
    assert wall["slice_2.5"] < 1.0  # ... a wall is not
    # the baseline counts the lungs' dense voxels, the nodule's among them
    assert nodule["dense_lung_voxels"] > background["dense_lung_voxels"]


def _mediastinum(node=False, tube=False):
    """Fat (-100 HU) with a vessel running through every slice (40 HU, non-contrast blood) and, where
    ``node``, an enlarged lymph node of radius 4 voxels (42 HU); air beyond the fat's edge."""
    z, y, x = np.mgrid[0:165, 0:40, 0:40].astype(np.float32)
    hu = np.full(z.shape, -100.0, dtype=np.float32)
    hu[:, :, 36:] = -880.0  # a lung beside the fat
    if tube:
        hu[(y - 10) ** 2 + (x - 10) ** 2 <= 3.0**2] = 40.0
    if node:
        hu[((z - 80) * 0.7) ** 2 + (y - 26) ** 2 + (x - 18) ** 2 <= 4.0**2] = 42.0
    return hu


def test_in_fat_the_blob_filter_scores_an_enlarged_node_and_not_a_vessel():
    """--region fat (lymphadenopathy): the node in the fat scores across slices, the vessel does not;
    the lungs region does not look at the fat at all."""
    mod = load_benchmark("nodule_blob_oracle")
    assert mod.FINDING_REGION["lymphadenopathy"] == "fat"
    vessel = mod.volume_scores(_mediastinum(tube=True), (2.5,), "fat")
    node = mod.volume_scores(_mediastinum(tube=True, node=True), (2.5,), "fat")
    for view in ("volume", "triplet"):
        key = f"{view}_2.5"
        assert vessel[key] < 0.5 * node[key], (key, node[key], vessel[key])
    assert node["soft_tissue_in_fat_voxels"] > vessel["soft_tissue_in_fat_voxels"] > 0
    in_lungs = mod.volume_scores(_mediastinum(tube=True, node=True), (2.5,), "lungs")
    assert in_lungs["volume_2.5"] == 0 and in_lungs["dense_lung_voxels"] == 0


def _toy_images(rng, n: int, with_disc: np.ndarray, size: int = 48):
    """Normalised-looking images (n, 3, size, size): lung-dark background with 3 bright line
    segments (vessels in plane) each, and, where ``with_disc``, a bright disc of radius 4 (a
    nodule); token labels (n, (size/16)^2, 1): the token holding the disc's centre."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pix = np.full((n, size, size), -0.8, dtype=np.float32)
    tok = np.zeros((n, (size // 16) ** 2, 1), dtype=np.float32)
    for i in range(n):
        for _ in range(3):
            a, b = rng.uniform(4, size - 4, 2), rng.uniform(4, size - 4, 2)
            t = np.clip(
                ((yy - a[0]) * (b[0] - a[0]) + (xx - a[1]) * (b[1] - a[1])) / max(np.sum((b - a) ** 2), 1),
                0,
                1,
            )
            d = np.hypot(yy - (a[0] + t * (b[0] - a[0])), xx - (a[1] + t * (b[1] - a[1])))
            pix[i][d <= 1.2] = 0.2
        if with_disc[i]:
            c = rng.uniform(6, size - 6, 2)
            pix[i][np.hypot(yy - c[0], xx - c[1]) <= 4.0] = 0.2
            tok[i, int(c[0] // 16) * (size // 16) + int(c[1] // 16), 0] = 1
    return torch.from_numpy(np.repeat(pix[:, None], 3, axis=1)), torch.from_numpy(tok)


def _toy_detector_aucs(**fit_kwargs) -> tuple[float, float]:
    """benchmarks/nodule_cnn_oracle.py's detector on the toy task: the held-out image AUC of its best
    token before and after 150 steps of ``fit`` (``fit_kwargs`` passed on)."""
    mod = load_benchmark("nodule_cnn_oracle")
    from hyperct.training.metrics import roc_auc

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2 == 0
    held_out, _ = _toy_images(rng, 64, y)
    model = mod.TokenDetector(width=16)

    def auc() -> float:
        model.eval()
        with torch.no_grad():
            return float(roc_auc(y.astype(int), model(held_out).amax(dim=1).numpy()))

    before = auc()
    mod.fit(model, lambda r: _toy_images(r, 16, r.random(16) < 0.5), 150, rng, **fit_kwargs)
    return before, auc()


def test_the_learned_detector_tells_a_disc_from_vessels_once_trained():
    """benchmarks/nodule_cnn_oracle.py: its detector, trained with the stage-1 token and token-max
    losses, ranks images by their best token: those with a nodule-like disc above those with only
    vessel-like lines, which the untrained detector does not."""
    before, after = _toy_detector_aucs()
    assert after > 0.9 and after > before + 0.2, (before, after)


def test_the_rank_loss_reads_only_the_hardest_negatives_and_orders_them_below_the_positives():
    """``--rank-negatives K``: the loss grows when a negative token outscores a positive one, only
    the K highest negatives count, and a batch without a positive adds nothing."""
    mod = load_benchmark("nodule_cnn_oracle")
    y = torch.tensor([1.0, 0, 0, 0, 0, 0])
    ordered = mod.rank_loss(torch.tensor([5.0, 0, -1, -2, -3, -4]), y, k=2)
    inverted = mod.rank_loss(torch.tensor([0.0, 5, -1, -2, -3, -4]), y, k=2)
    assert float(ordered) < 0.5 < float(inverted)
    # the third-highest negative is not among the 2 hardest: moving it changes nothing
    moved = mod.rank_loss(torch.tensor([5.0, 0, -1, -9, -3, -4]), y, k=2)
    assert torch.equal(moved, ordered)
    # ... and one that becomes the hardest does
    assert float(mod.rank_loss(torch.tensor([5.0, 0, -1, 6, -3, -4]), y, k=2)) > float(ordered) + 0.5
    logits = torch.zeros(6, requires_grad=True)
    none = mod.rank_loss(logits, torch.zeros(6), k=2)
    none.backward()
    assert float(none.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_the_rank_loss_trains_the_detector_too():
    """The toy task above with the ranking loss added (``--rank-negatives 8``): still learnt."""
    before, after = _toy_detector_aucs(rank_negatives=8)
    assert after > 0.9 and after > before + 0.2, (before, after)


def test_blob_tokens_mark_the_token_holding_a_nodule_and_not_a_vessel():
    """``--blob-target``: the auxiliary target of a token holding a nodule-sized sphere is well above
    that of a token a vessel runs through, and a triplet without the sphere has no such token."""
    mod = load_benchmark("nodule_cnn_oracle")
    from hyperct.preprocess import normalise

    def triplet(sphere: bool) -> torch.Tensor:
        hu = np.full((3, 48, 48), -880.0, dtype=np.float32)
        hu[:, :40, :40] = _lung(tube=True, sphere=sphere)[79:82]  # the sphere's centre is slice 80
        return normalise(torch.from_numpy(hu))

    with_nodule, without = mod.blob_tokens(torch.cat([triplet(True), triplet(False)]))
    # 3 x 3 tokens of 16 pixels: the vessel (12, 12) is in token 0, the sphere (26, 14) in token 3
    assert with_nodule[3] > 2 * max(float(with_nodule[0]), 0.05), with_nodule
    assert float(without.max()) < 0.5 * float(with_nodule[3]), (without, with_nodule)


def test_the_blob_target_trains_an_auxiliary_read_out_and_keeps_the_default_detector():
    """``TokenDetector(aux=True)`` adds a second read-out without changing the first's initial
    weights (the other arms stay reproducible), and ``fit(blob_target=W)`` trains it."""
    mod = load_benchmark("nodule_cnn_oracle")
    torch.manual_seed(0)
    plain = mod.TokenDetector(width=16)
    torch.manual_seed(0)
    both = mod.TokenDetector(width=16, aux=True)
    assert plain.aux is None
    for key, value in plain.state_dict().items():
        assert torch.equal(both.state_dict()[key], value), key
    start = both.aux.weight.detach().clone()
    rng = np.random.default_rng(0)
    mod.fit(both, lambda r: _toy_images(r, 4, r.random(4) < 0.5), 3, rng, blob_target=1.0)
    assert not torch.equal(both.aux.weight, start)


def test_evaluate_scores_the_auxiliary_read_out_by_its_own_maximum():
    """With ``--blob-target`` the evaluation also ranks the volumes by the auxiliary read-out's
    maximum (``aux_volume_max_auc``): here the read-out sees the bright images of the volumes that
    hold the finding and the finding's own logits are flat."""
    mod = load_benchmark("nodule_cnn_oracle")
    k = 0
    labels = np.zeros((8, 25), dtype=np.int64)
    labels[::2, k] = 1

    class Data(list):  # len() and .labels: what evaluate reads of a dataset
        pass

    data = Data(range(8))
    data.labels = labels

    class Sampler:
        def images(self, i, which):
            pix = torch.full((len(which), 3, 16, 16), 1.0 if labels[i, k] else -1.0)
            return pix, torch.zeros(len(which), 1, 25)

    model = mod.TokenDetector(width=16, aux=True)
    model.both = lambda x: (torch.zeros(len(x), 1), x.mean(dim=(1, 2, 3))[:, None])
    got = mod.evaluate(model, Sampler(), data, k)
    assert got["aux_volume_max_auc"] == 1.0 and got["volume_max_auc"] == 0.5, got
    assert got["positive"] == 4 and got["labelled"] == 8
    assert "aux_volume_max_auc" not in mod.evaluate(mod.TokenDetector(width=16), Sampler(), data, k)


def test_mining_returns_each_phantoms_highest_scoring_image_outside_the_finding():
    """``--mine-negatives P``: of each drawn phantom, the image whose highest token that is not the
    finding outscores every other image's; a brighter token that is the finding does not count."""
    mod = load_benchmark("nodule_cnn_oracle")
    k = 1
    bright = {0: 7, 1: 30}  # phantom -> the image with the brightest negative token

    class Sampler:
        def images(self, i, which):
            pix = torch.zeros(55, 3, 16, 32)  # 55 images of two tokens each
            tok = torch.zeros(55, 2, 25)
            pix[bright[i], :, :, :16] = 2.0
            pix[40, :, :, 16:] = 5.0  # brighter still, but a token holding the finding
            tok[40, 1, k] = 1.0
            tok[bright[i], 0, 3] = 1.0  # the hard negative holds another finding
            return pix[which], tok[which]

    class Mean(mod.TokenDetector):  # a token's score: its mean brightness
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 16).flatten(1)

    pix, tok, other = mod.mine(Mean(width=16), Sampler(), [0, 1], k, np.random.default_rng(0), phantoms=2)
    assert pix.shape == (2, 3, 16, 32) and tok.shape == (2, 2, 1)
    # both phantoms, either order: each one's image `bright`, negative for k, another finding there
    assert sorted(float(p[0, 0, 0]) for p in pix) == [2.0, 2.0] and float(pix[:, :, :, 16:].abs().max()) == 0
    assert float(tok.sum()) == 0 and other[:, 0, 0].all() and not other[:, 1, 0].any()


def test_the_blob_channel_is_an_input_the_detector_reads():
    """``--blob-channel``: the detector's first layer takes a fourth channel, the blob filter's
    response (``blob_pixels``, of which ``blob_tokens`` is the per-token maximum); the default
    detector keeps three."""
    mod = load_benchmark("nodule_cnn_oracle")
    from hyperct.preprocess import normalise

    hu = np.full((2, 3, 48, 48), -880.0, dtype=np.float32)
    hu[0, :, :40, :40] = _lung(tube=True, sphere=True)[79:82]
    hu[1, :, :40, :40] = _lung(tube=True)[79:82]
    pix = normalise(torch.from_numpy(hu.reshape(6, 48, 48))).reshape(2, 3, 48, 48)
    blob = mod.blob_pixels(pix)
    assert blob.shape == (2, 1, 48, 48)
    assert torch.equal(torch.nn.functional.max_pool2d(blob, 16).flatten(1), mod.blob_tokens(pix))
    assert mod.TokenDetector(width=16).features[0].in_channels == 3
    model = mod.TokenDetector(width=16, blob_channel=True)
    assert model.features[0].in_channels == 4
    with torch.no_grad():  # a first layer blind to the 3 image channels: only the blob channel is left
        model.features[0].weight[:, :3] = 0
        with_nodule, without = model(pix)
    assert not torch.allclose(with_nodule, without)
    # ... and with the blob channel zeroed too, nothing tells the two images apart
    with torch.no_grad():
        model.features[0].weight[:, 3] = 0
        assert torch.allclose(*model(pix))


def test_nodule_diameters_are_those_the_generator_draws():
    """``nodule_blob_oracle.nodule_diameters``: the drawn diameter of a phantom's largest nodule is
    the one the generated phantom reports (``info``), and NaN for a phantom without a nodule."""
    mod = load_benchmark("nodule_blob_oracle")
    import hyperct.phantom as ph
    from hyperct.training.datasets.phantoms import drawn_severities

    with_nodule = next(s for s in range(1000, 3000) if "lung_nodule" in drawn_severities(s))
    without = next(s for s in range(1000, 3000) if "lung_nodule" not in drawn_severities(s))

    class Data:
        seeds = [with_nodule, without]

    got = mod.nodule_diameters(Data(), [0, 1])
    drawn = ph.generate(with_nodule, None, matrix=64, n_slices=40).info["lung_nodule"]["nodules"][0]
    assert got[0] == pytest.approx(drawn["diameter_mm"], abs=0.05) and 8 <= got[0] <= 25
    assert np.isnan(got[1])


def test_by_diameter_scores_each_size_band_against_all_negatives():
    """A score that finds only the large nodules: AUC 1 in the large band, 0.5 in the small one."""
    mod = load_benchmark("nodule_blob_oracle")
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    diam = np.array([10.0, 11.0, 20.0, 22.0, np.nan, np.nan, np.nan, np.nan])
    score = np.array([0.5, 0.5, 2.0, 3.0, 0.5, 0.5, 0.5, 0.5])
    got = mod.by_diameter([{"s": float(v)} for v in score], y, diam, ["s"])
    assert got["8-12 mm"] == {"positive": 2, "s": 0.5}
    assert got["16-26 mm"] == {"positive": 2, "s": 1.0}
    assert got["12-16 mm"] == {"positive": 0}
