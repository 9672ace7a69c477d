"""The dataset variants (std, group, corrupt, mark): construction on small arrays, then on MNIST."""

from __future__ import annotations

import pytest
import torch

from harness.protocols import DataError, Split
from tasks import variants as V
from tasks.mnist import MNISTConfig, MNISTTask


def _splits(n: int = 40, k: int = 4, shape=(3, 8, 8)) -> tuple[Split, Split, Split]:
    g = torch.Generator().manual_seed(0)
    make = lambda name, m: Split(  # noqa: E731
        name,
        torch.rand(m, *shape, generator=g) * 0.5,
        torch.arange(m) % k,
        {"indices": torch.arange(m)},
    )
    return make("train", n), make("val", 6), make("test", 10)


# ----- group -----------------------------------------------------------------------------------
def test_group_pairs_consecutive_classes_and_keeps_fine_labels() -> None:
    assert V.group_labels(torch.tensor([0, 1, 2, 3, 9, 8]), 10).tolist() == [0, 0, 1, 1, 4, 4]
    train, val, test = V.apply_variant("group", *_splits(), num_classes=4)
    for split in (train, val, test):
        fine = split.meta["fine_labels"]
        assert torch.equal(fine, torch.arange(len(split)) % 4)
        assert torch.equal(split.y, fine // 2)
    assert V.variant_num_classes("group", 10) == 5 and V.variant_num_classes("mark", 10) == 10
    with pytest.raises(DataError, match="cannot be paired"):
        V.group_labels(torch.tensor([0, 1, 2]), 3)


# ----- corrupt ---------------------------------------------------------------------------------
def test_corrupt_flips_to_another_class_with_the_stated_probability() -> None:
    y = torch.arange(30_000) % 10
    labels, flipped = V.corrupt_labels(y, 10)
    assert flipped.dtype == torch.bool
    assert torch.equal(labels != y, flipped)  # a flip never lands on the original class
    assert abs(flipped.double().mean().item() - 0.3) < 0.01  # 30% (std of the share: 0.0026)
    # every other class equally likely: 9 offsets, each ~1/9 of the flips
    offsets = ((labels - y) % 10)[flipped]
    shares = torch.bincount(offsets, minlength=10)[1:].double() / flipped.sum()
    assert (shares - 1 / 9).abs().max() < 0.01
    again, again_flipped = V.corrupt_labels(y, 10)
    assert torch.equal(labels, again) and torch.equal(flipped, again_flipped)  # seed 42 fixed
    _, other = V.corrupt_labels(y, 10, seed=1)
    assert not torch.equal(flipped, other)


def test_corrupt_edge_probabilities_and_meta() -> None:
    y = torch.arange(12) % 3
    assert not V.corrupt_labels(y, 3, p=0.0)[1].any()
    labels, flipped = V.corrupt_labels(y, 3, p=1.0)
    assert flipped.all() and (labels != y).all()
    train, val, test = _splits()
    c_train, c_val, c_test = V.apply_variant("corrupt", train, val, test, num_classes=4)
    assert torch.equal(c_train.meta["true_labels"], train.y)
    assert torch.equal(c_train.y != train.y, c_train.meta["flipped"])
    assert c_val is val and c_test is test  # only training labels are corrupted
    with pytest.raises(DataError, match="at least two"):
        V.corrupt_labels(torch.zeros(3, dtype=torch.long), 1)


def test_corrupt_rate_is_an_option_of_the_variant() -> None:
    """The paper flips 30%; its reference code's index files flip 4.8% (CIFAR-10) and 2.0% (AwA2)."""
    train, val, test = _splits(n=4000, k=10)
    c_train, _, _ = V.apply_variant("corrupt", train, val, test, num_classes=10, corrupt_rate=0.048)
    share = c_train.meta["flipped"].double().mean().item()
    assert abs(share - 0.048) < 0.015  # std of the share at n = 4,000: 0.0034
    default, _, _ = V.apply_variant("corrupt", train, val, test, num_classes=10)
    assert abs(default.meta["flipped"].double().mean().item() - 0.3) < 0.03


# ----- mark ------------------------------------------------------------------------------------
def test_watermark_mask_is_centre_square_plus_frame() -> None:
    mask = V.watermark_mask(10, 10)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:8, 2:8] = True  # 6x6 centred
    expected[:2, :] = expected[-2:, :] = expected[:, :2] = expected[:, -2:] = True
    assert torch.equal(mask, expected)
    m28 = V.watermark_mask(28, 28)
    # frame: 28*28 - 24*24 = 208 pixels; square 36 pixels at rows/cols 11..16 (inside the frame)
    assert int(m28.sum()) == 208 + 36
    assert m28[11:17, 11:17].all() and not m28[10, 14] and not m28[17, 14]
    with pytest.raises(DataError, match="too small"):
        V.watermark_mask(5, 5)


def test_add_watermark_sets_channel_zero_to_one_and_others_to_zero() -> None:
    x = torch.full((2, 3, 10, 10), 0.5)
    out = V.add_watermark(x)
    mask = V.watermark_mask(10, 10)
    assert torch.equal(x, torch.full((2, 3, 10, 10), 0.5))  # input untouched
    assert (out[:, 0][:, mask] == 1).all() and (out[:, 1:][:, :, mask] == 0).all()
    assert (out[:, :, ~mask] == 0.5).all()
    grey = V.add_watermark(torch.zeros(1, 1, 10, 10))  # one channel (MNIST): white
    assert torch.equal(grey[0, 0] == 1, mask)


def test_mark_chooses_thirty_percent_of_class_two_and_marks_every_test_image() -> None:
    y = torch.tensor([2] * 20 + [1] * 10)
    chosen = V.mark_choice(y)
    assert int(chosen.sum()) == 6 and (y[chosen] == 2).all()
    assert torch.equal(chosen, V.mark_choice(y))  # seed 420 fixed
    train, val, test = _splits(n=40, k=4)  # class 2: 10 points -> 3 marked
    m_train, m_val, m_test = V.apply_variant("mark", train, val, test, num_classes=4)
    marked = m_train.meta["marked"]
    assert int(marked.sum()) == 3 and (train.y[marked] == 2).all()
    mask = V.watermark_mask(8, 8)
    assert (m_train.inputs[marked][:, 0][:, mask] == 1).all()
    assert torch.equal(m_train.inputs[~marked], train.inputs[~marked])
    for before, after in ((val, m_val), (test, m_test)):
        assert after.meta["marked"].all()
        assert (after.materialise()[:, 0][:, mask] == 1).all() and (
            after.materialise()[:, 1:][:, :, mask] == 0
        ).all()
        assert torch.equal(after.y, before.y)
    with pytest.raises(DataError, match="no training point"):
        V.mark_choice(torch.zeros(5, dtype=torch.long))


def test_unknown_variant_is_an_error() -> None:
    with pytest.raises(DataError, match="unknown dataset variant 'noisy'"):
        V.apply_variant("noisy", *_splits(), num_classes=4)


# ----- on MNIST --------------------------------------------------------------------------------
def _mnist(variant: str, **kw) -> MNISTTask:
    return MNISTTask(MNISTConfig(variant=variant, **kw))


def test_mnist_variants_are_the_same_points_for_every_training_set_size() -> None:
    for variant in ("corrupt", "mark"):
        small = _mnist(variant, n_train=300, n_test=20).load()
        large = _mnist(variant, n_train=3000, n_test=20).load()
        assert torch.equal(small.train.materialise(), large.train.inputs[:300])
        assert torch.equal(small.train.y, large.train.y[:300])
        key = "flipped" if variant == "corrupt" else "marked"
        assert torch.equal(small.train.meta[key], large.train.meta[key][:300])


def test_mnist_group_corrupt_and_mark() -> None:
    group = _mnist("group", n_train=2000, n_test=50)
    data = group.load()
    assert (
        group.num_classes == 5 and data.num_classes == 5 and group.build_model().classifier.out_features == 5
    )
    assert torch.equal(data.train.y, data.train.meta["fine_labels"] // 2)
    assert torch.equal(data.test.y, data.test.meta["fine_labels"] // 2)

    corrupt = _mnist("corrupt").load()  # all 60,000
    flipped = corrupt.train.meta["flipped"]
    assert abs(flipped.double().mean().item() - 0.3) < 0.01
    assert torch.equal(corrupt.train.y != corrupt.train.meta["true_labels"], flipped)
    std = _mnist("std").load()
    assert torch.equal(std.train.y, corrupt.train.meta["true_labels"])  # same order, same points

    mark = _mnist("mark", n_test=100).load()
    marked = mark.train.meta["marked"]
    n_two = int((mark.train.y == 2).sum())
    assert int(marked.sum()) == round(0.3 * n_two) and (mark.train.y[marked] == 2).all()
    white = (1 - 0.1307) / 0.3081  # pixel value 1 after normalisation
    mask = V.watermark_mask(28, 28)
    assert torch.allclose(mark.test.materialise()[:, 0][:, mask], torch.tensor(white))
    assert torch.allclose(mark.train.inputs[marked][:, 0][:, mask], torch.tensor(white))
    assert torch.equal(mark.train.inputs[~marked], std.train.inputs[~marked])


def test_mnist_corrupt_rate_option_reaches_the_variant() -> None:
    """`--task-option corrupt_rate=0.048` (the reference's CIFAR-10 share) flips that share; a bad rate
    is a one-line error."""
    low = _mnist("corrupt", n_train=5000, n_test=10, corrupt_rate=0.048).load()
    assert abs(low.train.meta["flipped"].double().mean().item() - 0.048) < 0.012
    default = _mnist("corrupt", n_train=5000, n_test=10).load()
    assert abs(default.train.meta["flipped"].double().mean().item() - 0.3) < 0.03
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match="corrupt_rate"):
        _mnist("corrupt", n_train=50, n_test=10, corrupt_rate=1.5).load()
