"""benchmarks/heart_cnn_oracle.py: the reduced volume it reads, the loss on partly missing labels, and
the two ways of reading a volume it compares (a 3-D CNN over the whole volume; HyperCT's way: each
image alone, averaged over the images, or over a random bag of them as stage 1 does)."""

from __future__ import annotations

import numpy as np
import torch

from tests.support.benchmarks import load_benchmark


def test_the_reduced_volume_averages_each_image_and_2x2_pixels_and_ramps_soft_tissue():
    mod = load_benchmark("heart_cnn_oracle")
    hu = np.full((165, 8, 8), -1000.0, dtype=np.float32)
    hu[3:6, :2, :2] = 38.0  # image 1, one reduced pixel: blood
    hu[6:9, :2, :2] = 52.0  # image 2: myocardium
    hu[9:12, 0, 0] = 1000.0  # image 3: one of the 4 pixels bright, the others air
    out = mod.reduced_volume(hu)
    assert out.shape == (2, 55, 4, 4) and out.dtype == np.float32
    assert np.isclose(out[0, 1, 0, 0], 0.038) and np.isclose(out[0, 9, 3, 3], -1.0)
    assert np.isclose(out[0, 3, 0, 0], (1000.0 - 3 * 1000.0) / 4 / 1000.0)
    # the soft-tissue channel tells blood from myocardium far more than HU / 1000 does
    soft, plain = out[1, 2, 0, 0] - out[1, 1, 0, 0], out[0, 2, 0, 0] - out[0, 1, 0, 0]
    assert np.isclose(soft, 14.0 / 60.0) and np.isclose(plain, 0.014) and soft > 15 * plain
    assert out[1, 0, 0, 0] == -1.0  # air saturates


def test_masked_bce_ignores_missing_labels():
    mod = load_benchmark("heart_cnn_oracle")
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1, -1], [-1, 0]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0])
    )
    assert torch.isclose(mod.masked_bce(logits, labels), want)
    assert float(mod.masked_bce(logits, torch.full((2, 2), -1))) == 0.0


def test_random_bags_draw_between_the_sizes_and_all_55_is_hyperct_reading():
    mod = load_benchmark("heart_cnn_oracle")
    bags = mod.random_bags(200, 55, 8, 55, np.random.default_rng(0))
    sizes = bags.sum(dim=1)
    assert int(sizes.min()) >= 8 and int(sizes.max()) <= 55 and sizes.float().std() > 5

    torch.manual_seed(0)
    model = mod.ImageMeanCNN(n_out=3, width=4).eval()
    x = torch.randn(2, 2, 55, 16, 16)
    with torch.no_grad():
        whole = model(x)
        assert torch.allclose(model(x, torch.ones(2, 55, dtype=torch.bool)), whole, atol=1e-5)
        # each image is read alone: changing image 7 changes only image 7's feature
        y = x.clone()
        y[:, :, 7] += 1.0
        fx, fy = model.image_features(x), model.image_features(y)
        changed = (fx - fy).abs().amax(dim=(0, 2)) > 1e-6
        assert changed.tolist() == [i == 7 for i in range(55)]
        # a bag averages only its images: a bag without image 7 does not see the change
        bag = torch.ones(2, 55, dtype=torch.bool)
        bag[:, 7] = False
        assert torch.allclose(model(x, bag), model(y, bag), atol=1e-5)
        assert not torch.allclose(model(y), whole, atol=1e-4)


def test_the_volume_cnn_reads_across_images():
    mod = load_benchmark("heart_cnn_oracle")
    torch.manual_seed(0)
    model = mod.HeartCNN(n_out=5, width=4).eval()
    x = torch.randn(1, 2, 55, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        y = x.clone()
        y[:, :, 30] += 1.0
        assert not torch.allclose(model(x), model(y))


def test_token_positions_follow_the_order_of_the_backbone_tokens():
    """heart_token_probe appends (row, column, image) to each final patch token; the tokens of
    ``token_features`` are image-major, then row-major within the image."""
    mod = load_benchmark("heart_token_probe")
    tokens = torch.zeros(2, 55 * 9 * 9, 4)
    out = mod.with_positions(tokens, grid=9)
    assert out.shape == (2, 55 * 81, 7)
    k = 7 * 81 + 2 * 9 + 5  # image 7, row 2, column 5
    assert torch.allclose(out[1, k, 4:], torch.tensor([2 / 8, 5 / 8, 7 / 54]))
    assert torch.equal(out[..., :4], tokens)


def test_the_token_mlp_reads_a_count_of_tokens_that_a_linear_map_of_the_mean_cannot():
    """What the probe adds over the linear readouts: a per-token nonlinearity before the mean, so it
    can count tokens of one kind (how many tokens are cavity) whose mean feature does not change."""
    mod = load_benchmark("heart_token_probe")
    rng = np.random.default_rng(0)
    n, t = 256, 60
    # every token is +-1 in feature 0 (a kind), random sign, so the mean is ~0 whatever the count;
    # the target is how many tokens have |feature 1| > 1 (a nonlinear property), which varies
    count = rng.integers(0, t, size=n)
    x = np.zeros((n, t, 2), dtype=np.float32)
    x[..., 0] = rng.choice([-1.0, 1.0], size=(n, t))
    for i in range(n):
        big = rng.choice(t, size=count[i], replace=False)
        x[i, :, 1] = rng.uniform(-0.5, 0.5, size=t)
        x[i, big, 1] = rng.choice([-2.0, 2.0], size=count[i])
    y = ((count - count.mean()) / count.std()).astype(np.float32)[:, None]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    model = mod.TokenMLPMean(2, 1, hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(model(xt), yt)) < 0.1
    # a linear map of the mean token explains almost nothing of the count
    mean = x.mean(axis=1)
    a = np.c_[mean, np.ones(n)]
    resid = y - a @ np.linalg.lstsq(a, y, rcond=None)[0]
    assert float((resid**2).mean()) > 0.8


def test_the_per_image_heart_head_reads_each_image_alone_and_fit_trains_it():
    mod = load_benchmark("heart_cnn_oracle")
    torch.manual_seed(0)
    model = mod.ImageMeanCNN(n_out=len(mod.HEART_FIELDS) + 7, width=4, n_slices=8).eval()
    x = torch.randn(2, 2, 55, 16, 16)
    with torch.no_grad():
        f = model.image_features(x)
        assert torch.allclose(model.read(f), model(x)) and model.slices(f).shape == (2, 55, 8)
        y = x.clone()
        y[:, :, 7] += 1.0
        changed = (model.slices(f) - model.slices(model.image_features(y))).abs().amax(dim=(0, 2)) > 1e-6
        assert changed.tolist() == [i == 7 for i in range(55)]
    assert mod.ImageMeanCNN(n_out=3, width=4).slices is None

    # fit adds a batch's extra loss: the per-image head learns only through it
    model.train()
    target = torch.randn(2, 55, 8)
    before = model.slices.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batches(extra: bool):
        f = model.image_features(x)
        out = (model.read(f), torch.zeros(2, len(mod.HEART_FIELDS)), torch.full((2, 7), -1))
        yield (*out, torch.nn.functional.mse_loss(model.slices(f), target)) if extra else out

    mod.fit(model, lambda: batches(False), opt, None, epochs=1, eval_every=5, score=dict)
    assert torch.equal(model.slices.weight, before)
    mod.fit(model, lambda: batches(True), opt, None, epochs=1, eval_every=5, score=dict)
    assert not torch.equal(model.slices.weight, before)
