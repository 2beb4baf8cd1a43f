"""Model presets: exact reference size, shapes, the adder head."""

from __future__ import annotations

import pytest
import torch

from mnist_addition.core import model as M
from mnist_addition.core.model import NUM_SUMS, AdderHead, build_model, count_parameters, param_groups


def test_seed_preset_has_exactly_the_reference_parameter_count():
    assert count_parameters(build_model("seed")) == 6_384_925


def test_fast_preset_is_small_at_default_width():
    from mnist_addition.core.config import TrainConfig

    assert count_parameters(build_model("fast", TrainConfig().width)) <= 150_000


@pytest.mark.parametrize("preset,width", [("seed", 32), ("fast", 16), ("fast", 8)])
def test_output_shapes(preset, width):
    model = build_model(preset, width).eval()
    digit_logits, sum_logits = model(torch.randn(5, 1, 28, 28), torch.arange(5))
    assert digit_logits.shape == (5, 10) and sum_logits.shape == (5, NUM_SUMS)


def test_stride_stem_halves_the_image_in_its_conv_and_keeps_the_weights_shapes():
    pooled, strided = build_model("fast", 8, "pool"), build_model("fast", 8, "stride")
    first = strided.features[0]
    assert first.stride == (2, 2) and first(torch.randn(2, 1, 28, 28)).shape == (2, 8, 14, 14)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in strided.features[:4])
    assert sorted(t.shape for t in pooled.state_dict().values()) == sorted(t.shape for t in strided.state_dict().values())
    assert pooled.state_dict().keys() != strided.state_dict().keys()  # one stem's weights never load into the other
    digit_logits, sum_logits = strided.eval()(torch.randn(3, 1, 28, 28), torch.arange(3))
    assert digit_logits.shape == (3, 10) and sum_logits.shape == (3, NUM_SUMS)
    with pytest.raises(ValueError, match="unknown stem 'none'"):
        build_model("fast", 8, "none")


@pytest.mark.parametrize("stem", ["pool", "stride"])
def test_crop_cuts_the_border_so_the_border_never_matters(stem):
    images = torch.randn(4, 1, 28, 28)
    framed = images.clone()
    framed[:, :, :3], framed[:, :, -3:], framed[:, :, :, :3], framed[:, :, :, -3:] = 9.0, -9.0, 9.0, -9.0  # only the 3-pixel frame
    numbers = torch.arange(4)
    for crop in range(5):
        torch.manual_seed(0)
        model = build_model("fast", 8, stem, crop).eval()
        digit_logits, sum_logits = model(images, numbers)
        assert digit_logits.shape == (4, 10) and sum_logits.shape == (4, NUM_SUMS)
        same = torch.equal(digit_logits, model(framed, numbers)[0])
        assert same == (crop >= 3), crop  # a crop of 3 or more never sees the frame; less does
    with pytest.raises(ValueError, match=r"crop must be in 0..4 pixels, got 5"):
        build_model("fast", 8, stem, 5)


def test_crop_shrinks_the_maps_and_its_weights_never_load_into_another_crop():
    uncropped, crop2, crop3 = (build_model("fast", 8, "stride", crop) for crop in (0, 2, 3))
    x = torch.randn(2, 1, 28, 28)
    assert crop3.features[:4](x).shape == (2, 8, 11, 11)  # the crop, then the stride-2 conv: 22x22 -> 11x11
    assert crop3.classifier.in_features == 4 * 8 * 2 * 2 and uncropped.classifier.in_features == 4 * 8 * 3 * 3
    # crops 1 and 2 leave the 3x3 map: the same shapes, but a Crop layer in front, so other names
    assert count_parameters(crop2) == count_parameters(uncropped) > count_parameters(crop3)
    assert set(crop2.state_dict()) != set(uncropped.state_dict())


def test_dropout_acts_in_training_only_and_keeps_the_weights_names():
    torch.manual_seed(0)
    plain, dropped = build_model("fast", 8), build_model("fast", 8, dropout=0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())  # no layer of its own: weights load both ways
    dropped.load_state_dict(plain.state_dict())
    x, r = torch.randn(4, 1, 28, 28), torch.arange(4)
    plain.eval(), dropped.eval()
    assert all(torch.equal(a, b) for a, b in zip(plain(x, r), dropped(x, r)))  # evaluation: no dropout
    plain.train(), dropped.train()
    assert not torch.equal(plain(x, r)[0], dropped(x, r)[0])  # training: half the classifier's inputs zeroed


def test_depth_adds_convs_at_14x14_then_7x7_and_depth_4_is_the_net_runs_saved():
    nets = {depth: build_model("fast", 8, "pool", 2, depth=depth) for depth in M.DEPTHS}
    convs = {depth: [m for m in net.features if isinstance(m, torch.nn.Conv2d)] for depth, net in nets.items()}
    assert [len(c) for c in convs.values()] == [4, 5, 6]
    assert (convs[5][2].in_channels, convs[5][2].out_channels) == (16, 16)  # after the 2w conv, before its pool
    assert (convs[6][5].in_channels, convs[6][5].out_channels) == (32, 32)  # a third 4w conv at 7x7
    x = torch.randn(2, 1, 28, 28)
    for depth, net in nets.items():
        pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
        assert net.features[:pools[1]](x).shape == (2, 16, 12, 12), depth  # the extra 2w conv runs at 12x12
        assert net.features[:pools[2]](x).shape == (2, 32, 6, 6), depth
        digit_logits, sum_logits = net.eval()(x, torch.arange(2))
        assert digit_logits.shape == (2, 10) and sum_logits.shape == (2, NUM_SUMS)
    # depth 4 is the net every earlier run saved: the same layers under the same names
    assert [k for k in nets[4].state_dict() if k.endswith(".weight")][:5] == [
        "features.1.weight", "features.2.weight", "features.5.weight", "features.6.weight", "features.9.weight"]
    for deeper in (5, 6):  # a checkpoint of one depth never loads into another
        with pytest.raises(RuntimeError):
            nets[deeper].load_state_dict(nets[4].state_dict())
    assert count_parameters(nets[4]) < count_parameters(nets[5]) < count_parameters(nets[6])
    with pytest.raises(ValueError, match="depth must be one of 4, 5, 6 conv layers, got 7"):
        build_model("fast", 8, depth=7)


def test_the_configs_copies_of_the_models_choices_agree():
    """config.py imports no torch, so it keeps its own copies of the model's choices."""
    from mnist_addition.core import config as C

    assert C.DEPTHS == M.DEPTHS and C.TTA_VIEWS == tuple(M.TTA_SHIFTS)
    assert C.INT_RANGES["crop"][:2] == (0, M.MAX_CROP)


def test_shifted_views_move_each_image_one_pixel_and_fill_in_its_background():
    image = torch.full((1, 1, 28, 28), -0.42)
    image[0, 0, 10, 12] = 2.0
    views = M.shifted_views(image, M.TTA_SHIFTS[9])
    assert views.shape == (9, 1, 28, 28)
    for view, (dy, dx) in zip(views, M.TTA_SHIFTS[9]):
        assert view[0, 10 + dy, 12 + dx] == 2.0 and (view > 0).sum() == 1  # moved down dy, right dx
        assert view.amin() == -0.42
    edge = torch.full((1, 1, 28, 28), -0.42)
    edge[0, 0, :, 0] = 2.0  # ink on the left border: shifted left it leaves, shifted right it stays
    left, right = M.shifted_views(edge, ((0, -1), (0, 1)))
    assert (left > 0).sum() == 0 and (right[0, :, 1] == 2.0).all()


@pytest.mark.parametrize("views", [5, 9])
def test_tta_averages_the_views_log_probabilities_in_evaluation_only(views):
    torch.manual_seed(0)
    plain, tta = build_model("fast", 8), build_model("fast", 8, tta=views)
    assert list(plain.state_dict()) == list(tta.state_dict())  # no weights of its own
    tta.load_state_dict(plain.state_dict())
    x, r = torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9])
    plain.eval(), tta.eval()
    digit, total = tta(x, r)
    each = [plain(M.shifted_views(x, (shift,)), r) for shift in M.TTA_SHIFTS[views]]
    assert torch.allclose(digit, torch.stack([d.log_softmax(1) for d, _ in each]).mean(0), atol=1e-5)
    assert torch.allclose(total, torch.stack([s.log_softmax(1) for _, s in each]).mean(0), atol=1e-5)
    assert not torch.allclose(digit, plain(x, r)[0].log_softmax(1), atol=1e-4)  # the shifted views count
    plain.train(), tta.train()
    torch.manual_seed(1)
    trained = plain(x, r)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(trained, tta(x, r)))  # training sees the image once


def test_width_scales_the_fast_model():
    assert count_parameters(build_model("fast", 8)) < count_parameters(build_model("fast", 16)) < \
        count_parameters(build_model("fast", 32))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        build_model("big")


def test_adder_table_adds_when_set_to_addition():
    head = AdderHead()
    with torch.no_grad():
        for r in range(10):
            for d in range(10):
                head.table[r, d, d + r] = 1.0
    digit_logits = torch.full((10, 10), -20.0)
    digit_logits[torch.arange(10), torch.arange(10)] = 20.0  # confident: digit i for row i
    numbers = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert torch.equal(head(digit_logits, numbers).argmax(1), torch.arange(10) + numbers)


def test_no_weight_decay_on_biases_norms_or_adder():
    model = build_model("fast", 8)
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith("weight") and "adder" not in n for n in names)
    assert groups[1]["weight_decay"] == 0.0 and any(p.ndim == 1 for p in groups[1]["params"])


def test_adder_gradients_are_bitwise_reproducible():
    # Indexing the table (table[numbers]) back-propagates through a parallel scatter-add whose
    # rounding changed from run to run on CPU; the one-hot matmul must give identical gradients.
    torch.manual_seed(0)
    head = AdderHead()
    with torch.no_grad():
        head.table.normal_()
    logits, numbers = torch.randn(8192, 10), torch.randint(0, 10, (8192,))
    grads = []
    for _ in range(5):
        head.zero_grad()
        head(logits, numbers).pow(2).sum().backward()
        grads.append(head.table.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])
