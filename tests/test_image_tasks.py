"""CIFAR-10 and AwA2 on tiny copies in the exact on-disk formats; the ResNets and their weights rules.

The fixtures write torchvision's CIFAR-10 python batches (a few dozen random images) and an AwA2
image folder (four classes of tiny JPEGs, with classes.txt) into temporary folders; nothing here
needs the real datasets, and nothing may touch the network.
"""

from __future__ import annotations

import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from harness.config import ConfigError
from harness.protocols import DataError, Split, TaskData, feature_split
from harness.registry import TASKS
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one
from tasks import awa2 as awa2_module
from tasks import cifar10 as cifar_module
from tasks.architectures import TinyMLP
from tasks.awa2 import AwA2Config, AwA2Task
from tasks.cifar10 import CIFAR10Config, CIFAR10Task
from tasks.resnets import resnet18_cifar, resnet50_awa2
from tasks.training import train_task_model
from tasks.variants import watermark_mask

CPU = torch.device("cpu")
# The usual statistics, written out here rather than read from the modules under test.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

N_PER_BATCH, N_TEST_FILE = 8, 20  # 5 x 8 = 40 training images
AWA_CLASSES = ("antelope", "grizzly+bear", "killer+whale", "beaver")
AWA_COUNTS = (9, 11, 10, 12)  # 42 images; round(42 * 7452 / 37322) = 8 held out
AWA_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40))


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch weights or open a URL fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args!r}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# =============================================================================================
# Tiny datasets in the official formats
# =============================================================================================
def _write_batch(path: Path, data: np.ndarray, labels: list[int], name: bytes) -> None:
    batch = {
        b"batch_label": name,
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """DATA_ROOT/cifar-10-batches-py with 5 x 8 training and 20 test images (random uint8)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(5 * N_PER_BATCH, 3072), dtype=np.uint8)
    # Source image 0: red plane 255 (but pixel (row 0, col 1) = 0), green 0, blue 128.
    train_x[0, :1024], train_x[0, 1024:2048], train_x[0, 2048:] = 255, 0, 128
    train_x[0, 1] = 0
    train_y = [i % 10 for i in range(5 * N_PER_BATCH)]
    for b in range(5):
        rows = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
        _write_batch(folder / f"data_batch_{b + 1}", train_x[rows], train_y[rows], b"training batch")
    test_x = rng.integers(0, 256, size=(N_TEST_FILE, 3072), dtype=np.uint8)
    test_y = [(3 * i) % 10 for i in range(N_TEST_FILE)]
    _write_batch(folder / "test_batch", test_x, test_y, b"testing batch 1 of 1")
    meta = {b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": N_PER_BATCH}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle)
    return {
        "root": str(root),
        "train_x": train_x,
        "train_y": torch.tensor(train_y),
        "test_x": test_x,
        "test_y": torch.tensor(test_y),
    }


def _cifar(cifar: dict[str, object], **overrides: object) -> CIFAR10Task:
    config = CIFAR10Config.from_dict({"data_root": cifar["root"], "n_val": 5, **overrides})
    return CIFAR10Task(config)


def _awa_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    Image.new("RGB", size, colour).save(path, quality=95)


@pytest.fixture(scope="module")
def awa(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DATA_ROOT/Animals_with_Attributes2 with classes.txt and JPEGImages/<class>/*.jpg (42 images)."""
    root = tmp_path_factory.mktemp("awa")
    base = root / "Animals_with_Attributes2"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i + 1}\t{name}\n" for i, name in enumerate(AWA_CLASSES)))
    for name, count, colour in zip(AWA_CLASSES, AWA_COUNTS, AWA_COLOURS, strict=True):
        folder = base / "JPEGImages" / name
        folder.mkdir()
        for i in range(count):
            _awa_image(folder / f"{name}_{10001 + i}.jpg", colour, (24 + 2 * i, 20 + i % 3))
        (folder / "notes.txt").write_text("not an image")  # ignored
    return str(root)


def _awa(root: str, **overrides: object) -> AwA2Task:
    values = {"data_root": root, "image_size": 16, "n_val": 3, "pretrained": False, **overrides}
    return AwA2Task(AwA2Config.from_dict(values))


@pytest.fixture(scope="module")
def awa_std(awa: str) -> TaskData:
    return _awa(awa).load()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved state_dict of a fresh torchvision ResNet-50 (the format of resnet50-0676ba61.pth)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-test.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def _unnormalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


# =============================================================================================
# Models
# =============================================================================================
def test_registry_resolves_the_image_tasks() -> None:
    assert TASKS.get("cifar10") is CIFAR10Task
    assert TASKS.get("awa2") is AwA2Task
    assert "--data-root" in TASKS.description("cifar10") and "--data-root" in TASKS.description("awa2")


@pytest.mark.parametrize(
    ("build", "x", "feature_dim", "classes"),
    [
        (lambda: resnet18_cifar(10), torch.randn(3, 3, 32, 32), 512, 10),
        (lambda: resnet50_awa2(4), torch.randn(2, 3, 16, 16), 2048, 4),
    ],
    ids=["resnet18", "resnet50"],
)
def test_resnets_split_into_features_and_classifier(build, x, feature_dim: int, classes: int) -> None:
    torch.manual_seed(0)
    model = build().eval()
    features, classifier = feature_split(model)
    with torch.no_grad():
        phi = features(x)
        logits = model(x)
    assert model.feature_dim == feature_dim
    assert phi.shape == (len(x), feature_dim) and (phi >= 0).all()
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == classes
    assert torch.equal(logits, classifier(phi))
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (2, 2))
    assert isinstance(model.features.maxpool, torch.nn.MaxPool2d)  # kept, as documented
    assert not any(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))


def test_resnet50_loads_a_local_torchvision_state_dict(resnet50_file: Path) -> None:
    saved = torch.load(resnet50_file, weights_only=True)
    torch.manual_seed(1)
    model = resnet50_awa2(7, weights_path=resnet50_file)
    state = model.state_dict()
    for key, value in saved.items():
        if key.startswith(("conv1.", "fc.")):
            continue  # replaced by fresh layers
        assert torch.equal(state[f"features.{key}"], value), key
    assert state["features.conv1.weight"].shape == (64, 3, 3, 3)  # torchvision's is (64, 3, 7, 7)
    assert state["classifier.weight"].shape == (7, 2048)
    assert not torch.equal(state["classifier.weight"][:7], saved["fc.weight"][:7])


def test_resnet50_rejects_wrong_weight_files(resnet50_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resnet50_awa2(5, weights_path=tmp_path / "absent.pth")

    resnet18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)
    with pytest.raises(DataError, match=r"not a torchvision ResNet-50 state_dict: .*missing.*wrong shape"):
        resnet50_awa2(5, weights_path=resnet18)

    saved = torch.load(resnet50_file, weights_only=True)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": saved, "epoch": 3}, wrapped)
    with pytest.raises(DataError, match="training checkpoint"):
        resnet50_awa2(5, weights_path=wrapped)

    prefixed = tmp_path / "dataparallel.pth"
    torch.save({f"module.{k}": v for k, v in saved.items()}, prefixed)
    with pytest.raises(DataError, match="'module.'"):
        resnet50_awa2(5, weights_path=prefixed)

    not_a_pickle = tmp_path / "garbage.pth"
    not_a_pickle.write_bytes(b"definitely not torch")
    with pytest.raises(DataError, match="cannot read weights file"):
        resnet50_awa2(5, weights_path=not_a_pickle)


# =============================================================================================
# CIFAR-10
# =============================================================================================
def test_cifar_shapes_labels_and_the_val_test_split(cifar: dict[str, object]) -> None:
    data = _cifar(cifar).load()
    assert (len(data.train), len(data.val), len(data.test)) == (40, 5, 15)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    for split in (data.train, data.val, data.test):
        assert (
            split.materialise().shape == (len(split), 3, 32, 32)
            and split.materialise().dtype == torch.float32
        )
        assert split.y.dtype == torch.long and 0 <= split.y.min() and split.y.max() <= 9
    # Train: the fixed seed-0 order of the file order; val/test: the seed-42 permutation.
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(data.train.meta["indices"], order)
    assert torch.equal(data.train.y, cifar["train_y"][order])
    perm = torch.randperm(N_TEST_FILE, generator=torch.Generator().manual_seed(42))
    assert torch.equal(data.val.meta["indices"], perm[:5])
    assert torch.equal(data.test.meta["indices"], perm[5:])
    assert torch.equal(data.test.y, cifar["test_y"][perm[5:]])


def test_cifar_pixels_and_normalisation(cifar: dict[str, object]) -> None:
    data = _cifar(cifar).load()
    pixels = _unnormalise(data.train.materialise(), CIFAR_MEAN, CIFAR_STD)
    raw = torch.from_numpy(cifar["train_x"]).reshape(-1, 3, 32, 32)[data.train.meta["indices"]]
    assert torch.allclose(pixels, raw.float() / 255, atol=1e-5)
    test_raw = torch.from_numpy(cifar["test_x"]).reshape(-1, 3, 32, 32)[data.test.meta["indices"]]
    assert torch.allclose(
        _unnormalise(data.test.materialise(), CIFAR_MEAN, CIFAR_STD), test_raw / 255, atol=1e-5
    )
    # Source image 0: planes R, G, B in that order, row-major within a plane.
    image = data.train.inputs[int(torch.nonzero(data.train.meta["indices"] == 0))]
    expected = torch.empty(3, 32, 32)
    expected[0], expected[1], expected[2] = 1.0, 0.0, 128 / 255
    expected[0, 0, 1] = 0.0
    for c in range(3):
        expected[c] = (expected[c] - CIFAR_MEAN[c]) / CIFAR_STD[c]
    assert torch.allclose(image, expected, atol=1e-5)


def test_cifar_n_train_and_n_test_follow_the_file_contents(cifar: dict[str, object]) -> None:
    full = _cifar(cifar).load()
    cut = _cifar(cifar, n_train=10, n_test=4).load()
    assert (len(cut.train), len(cut.val), len(cut.test)) == (10, 5, 4)
    assert torch.equal(cut.train.materialise(), full.train.inputs[:10]) and torch.equal(
        cut.test.y, full.test.y[:4]
    )
    with pytest.raises(
        DataError, match=r"--n-train 41 is larger than the cifar10 training set \(40 points\)"
    ):
        _cifar(cifar, n_train=41).load()
    with pytest.raises(DataError, match=r"--n-test 16 is larger than the cifar10 test split \(15 points\)"):
        _cifar(cifar, n_test=16).load()
    with pytest.raises(DataError, match=r"test_batch holds 20 images.*--task-option n_val=K with K < 20"):
        _cifar(cifar, n_val=20).load()


@pytest.mark.parametrize("variant", ["group", "corrupt", "mark"])
def test_cifar_variants(cifar: dict[str, object], variant: str) -> None:
    task = _cifar(cifar, variant=variant)
    data = task.load()
    if variant == "group":
        assert data.num_classes == 5 and task.build_model().classifier.out_features == 5
        for split in (data.train, data.val, data.test):
            assert torch.equal(split.y, split.meta["fine_labels"] // 2)
        assert int(data.train.y.max()) == 4
    elif variant == "corrupt":
        flipped = data.train.meta["flipped"]
        assert torch.equal(data.train.y != data.train.meta["true_labels"], flipped)
        assert torch.equal(data.train.meta["true_labels"], cifar["train_y"][data.train.meta["indices"]])
    else:
        mask = watermark_mask(32, 32)
        red = [
            (1 - CIFAR_MEAN[0]) / CIFAR_STD[0],
            -CIFAR_MEAN[1] / CIFAR_STD[1],
            -CIFAR_MEAN[2] / CIFAR_STD[2],
        ]
        for split in (data.val, data.test):
            assert split.meta["marked"].all()
            for c in range(3):
                values = split.materialise()[:, c][:, mask]
                assert torch.allclose(values, torch.full_like(values, red[c]), atol=1e-5)
        marked = data.train.meta["marked"]
        assert (data.train.y[marked] == 2).all() and int(marked.sum()) == round(0.3 * 4)  # 4 of class 2
        values = data.train.inputs[marked][:, 0][:, mask]
        assert torch.allclose(values, torch.full_like(values, red[0]), atol=1e-5)


def test_cifar_missing_data_names_the_layout(cifar: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        CIFAR10Task(CIFAR10Config()).load()
    message = str(info.value)
    for part in ("--data-root", "cifar-10-batches-py", "data_batch_1", "test_batch", "download=True"):
        assert part in message
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DataError, match=f"CIFAR-10 not found: {folder} does not exist"):
        CIFAR10Task(CIFAR10Config(data_root=str(tmp_path))).load()
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError) as info:
        CIFAR10Task(CIFAR10Config(data_root=str(tmp_path))).load()
    message = str(info.value)
    missing = f"CIFAR-10 files missing in {folder}: data_batch_2, data_batch_3, data_batch_4, "
    missing += "data_batch_5, test_batch."
    assert message.startswith(missing)  # data_batch_1 exists, so it is not listed
    assert "download=True" in message
    with pytest.raises(DataError, match="does not exist"):
        CIFAR10Task(CIFAR10Config(data_root=str(tmp_path / "nowhere")))


def test_cifar_malformed_batch_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "test_batch"
    _write_batch(bad, np.zeros((3, 100), dtype=np.uint8), [0, 1, 2], b"bad")
    with pytest.raises(DataError, match=r"\(n, 3072\) uint8"):
        cifar_module.read_batch(bad)
    _write_batch(bad, np.zeros((3, 3072), dtype=np.uint8), [0, 1], b"bad")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        cifar_module.read_batch(bad)
    _write_batch(bad, np.zeros((2, 3072), dtype=np.uint8), [0, 10], b"bad")
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        cifar_module.read_batch(bad)


def test_cifar_presets_and_config_validation() -> None:
    assert CIFAR10Config.quick().epochs < CIFAR10Config.paper().epochs
    assert CIFAR10Config.paper().n_val == 2000 and CIFAR10Config.quick().n_train is None
    with pytest.raises(ConfigError, match="optimizer"):
        CIFAR10Config(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="checkpoint_every"):
        CIFAR10Config.from_dict({"checkpoint_every": "0"})


def test_checkpoints_are_kept_every_n_epochs_and_after_the_last() -> None:
    # The task's recipe on a tiny MLP (train_task_model takes any classifier): fast, same bookkeeping.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 6, generator=g), torch.arange(12) % 3
    splits = [Split(name, x, y, {"indices": torch.arange(12)}) for name in ("train", "val", "test")]
    data = TaskData(*splits, num_classes=3, variant="std", input_shape=(6,))
    config = CIFAR10Config(epochs=5, checkpoint_every=2, batch_size=4, optimizer="adam", lr=1e-2)
    torch.manual_seed(0)
    trained = train_task_model(TinyMLP(6, 8, 3), data, config, device=CPU, label="test")
    assert [c.epoch for c in trained.checkpoints] == [2, 4, 5]
    assert all(c.lr == 1e-2 for c in trained.checkpoints)
    assert trained.history["checkpoint_epochs"] == [2, 4, 5] and len(trained.history["loss"]) == 5
    final = trained.model.state_dict()
    assert all(torch.equal(trained.checkpoints[-1].state[k], final[k]) for k in final)
    assert not torch.equal(trained.checkpoints[0].state["classifier.weight"], final["classifier.weight"])
    assert 0.0 <= trained.history["val_accuracy"] <= 1.0


@pytest.mark.slow
def test_runner_end_to_end_on_tiny_cifar(cifar: dict[str, object], tmp_path: Path) -> None:
    spec = RunSpec(
        task=ComponentSpec(
            "cifar10",
            (("data_root", cifar["root"]), ("n_train", 10), ("n_test", 5), ("n_val", 4)),
            preset="quick",
        ),
        method=ComponentSpec("dualda", preset="quick"),
        metrics=(ComponentSpec("class_detection"),),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=1, batch_size=8),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]
    assert (record["task"]["n_train"], record["task"]["n_test"]) == (10, 5)
    assert record["task"]["num_classes"] == 10
    assert record["task"]["model"]["history"]["checkpoint_epochs"] == [1, 2]
    assert 0.0 <= record["metrics"]["class_detection"]["value"] <= 1.0


# =============================================================================================
# AwA2
# =============================================================================================
def test_heldout_quota_reproduces_the_paper_sizes() -> None:
    # Hand-computed: H = 8; floor(8 n / 42) = 1, 2, 1, 2 with remainders .71, .10, .90, .29 of 42.
    assert awa2_module.heldout_quota(list(AWA_COUNTS)) == [2, 2, 2, 2]
    counts = [400 + (37 * c) % 900 for c in range(50)]
    counts[-1] += 37_322 - sum(counts)
    quota = awa2_module.heldout_quota(counts)
    assert sum(quota) == 7_452 and sum(counts) - sum(quota) == 29_870
    for n, q in zip(counts, quota, strict=True):
        assert abs(q - n * 7_452 / 37_322) < 1


def test_awa2_split_rule_shapes_and_labels(awa: str, awa_std: TaskData) -> None:
    data = awa_std
    assert (len(data.train), len(data.val), len(data.test)) == (34, 3, 5)
    assert data.num_classes == 4 and data.input_shape == (3, 16, 16)
    for split in (data.train, data.val, data.test):
        assert (
            split.materialise().shape == (len(split), 3, 16, 16)
            and split.materialise().dtype == torch.float32
        )
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor(AWA_COUNTS))  # source order
    idx = [data.train.meta["indices"], data.val.meta["indices"], data.test.meta["indices"]]
    assert torch.equal(torch.sort(torch.cat(idx)).values, torch.arange(42))
    for split, index in zip((data.train, data.val, data.test), idx, strict=True):
        assert torch.equal(split.y, labels[index])
    # The documented rule, step by step.
    generator = torch.Generator().manual_seed(42)
    held = []
    start = 0
    for count in AWA_COUNTS:
        held.append(start + torch.randperm(count, generator=generator)[:2])
        start += count
    heldout = torch.sort(torch.cat(held)).values
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(42))
    assert torch.equal(data.val.meta["indices"], heldout[perm[:3]])
    assert torch.equal(data.test.meta["indices"], heldout[perm[3:]])
    order = torch.randperm(34, generator=torch.Generator().manual_seed(0))
    train_source = torch.tensor([i for i in range(42) if i not in set(heldout.tolist())])
    assert torch.equal(data.train.meta["indices"], train_source[order])
    # Deterministic: a second task gives the same split.
    again = _awa(awa, n_train=5).load()
    assert torch.equal(again.train.meta["indices"], data.train.meta["indices"][:5])


def test_awa2_pixels_follow_the_class_folders_and_imagenet_normalisation(awa_std: TaskData) -> None:
    for split in (awa_std.train, awa_std.test):
        pixels = _unnormalise(split.materialise(), IMAGENET_MEAN, IMAGENET_STD)
        expected = torch.tensor(AWA_COLOURS, dtype=torch.float32)[split.y] / 255  # (n, 3)
        assert torch.allclose(pixels, expected[:, :, None, None].expand_as(pixels), atol=6 / 255)


def test_awa2_decode_resizes_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    # 48 x 24 image: left quarter black, right quarter blue, middle white. Shorter side -> 16 gives
    # 32 x 16; the centre crop keeps columns 8..23 of it: the white middle only.
    image = np.full((24, 48, 3), 255, dtype=np.uint8)
    image[:, :12] = 0
    image[:, 36:] = (0, 0, 255)
    path = tmp_path / "wide.jpg"
    Image.fromarray(image).save(path, quality=95)
    out = awa2_module.decode_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[:, 2:-2].min() > 230  # white (JPEG and bilinear edges spare the inner columns)
    grey = tmp_path / "grey.png"
    Image.new("L", (20, 30), 100).save(grey)
    assert np.array_equal(awa2_module.decode_image(grey, 10), np.full((10, 10, 3), 100, dtype=np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        awa2_module.decode_image(broken, 16)


@pytest.mark.parametrize("variant", ["group", "corrupt", "mark"])
def test_awa2_variants(awa: str, variant: str) -> None:
    task = _awa(awa, variant=variant)
    data = task.load()
    if variant == "group":
        assert data.num_classes == 2
        assert torch.equal(data.train.y, data.train.meta["fine_labels"] // 2)
        assert set(data.test.y.tolist()) <= {0, 1}
    elif variant == "corrupt":
        assert torch.equal(data.train.y != data.train.meta["true_labels"], data.train.meta["flipped"])
    else:
        mask = watermark_mask(16, 16)
        red = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]] + [
            -IMAGENET_MEAN[c] / IMAGENET_STD[c] for c in (1, 2)
        ]
        assert data.test.meta["marked"].all()
        for c in range(3):
            values = data.test.materialise()[:, c][:, mask]
            assert torch.allclose(values, torch.full_like(values, red[c]), atol=1e-5)
        # Off the mask the test images keep their class colour.
        pixels = _unnormalise(data.test.materialise(), IMAGENET_MEAN, IMAGENET_STD)[:, :, ~mask]
        colours = torch.tensor(AWA_COLOURS, dtype=torch.float32)[data.test.y] / 255
        assert torch.allclose(pixels, colours[:, :, None].expand_as(pixels), atol=6 / 255)


def test_awa2_sizes_are_checked_before_decoding(awa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("images were decoded before the sizes were checked")

    monkeypatch.setattr(awa2_module, "decode_images", refuse)
    with pytest.raises(DataError, match=r"--n-train 35 is larger than the AwA2 training set \(34 points\)"):
        _awa(awa, n_train=35).load()
    with pytest.raises(DataError, match=r"--n-test 6 is larger than the AwA2 test split \(5 points\)"):
        _awa(awa, n_test=6).load()
    with pytest.raises(DataError, match=r"leave 8 held out.*--task-option n_val=K with K < 8"):
        _awa(awa, n_val=8).load()


def test_awa2_missing_data_names_the_layout(awa: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        _awa(None).load()
    message = str(info.value)
    for part in ("--data-root", "Animals_with_Attributes2", "classes.txt", "JPEGImages", "AwA2-data.zip"):
        assert part in message
    with pytest.raises(DataError) as info:
        _awa(str(tmp_path)).load()
    assert str(tmp_path / "Animals_with_Attributes2" / "classes.txt") in str(info.value)
    base = tmp_path / "Animals_with_Attributes2"
    (base / "JPEGImages" / "antelope").mkdir(parents=True)
    _awa_image(base / "JPEGImages" / "antelope" / "a.jpg", (1, 2, 3), (16, 16))
    (base / "classes.txt").write_text("1\tantelope\n2\tbat\n")
    with pytest.raises(DataError, match=r"JPEGImages/bat \(class 2 of classes.txt\) is missing"):
        _awa(str(tmp_path)).load()
    (base / "classes.txt").write_text("1\tantelope\n3\tbat\n")
    with pytest.raises(DataError, match="line 2"):
        _awa(str(tmp_path)).load()


def test_awa2_pretrained_weights_rules(awa: str, resnet50_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        AwA2Task(AwA2Config(data_root=awa))  # the paper's pretrained=True, but no file
    message = str(info.value)
    for part in ("--task-option pretrained_weights=PATH", "resnet50-0676ba61.pth", "pretrained=false"):
        assert part in message
    with pytest.raises(ConfigError, match="contradicts"):
        AwA2Config(pretrained=False, pretrained_weights=str(resnet50_file))
    assert AwA2Config.from_dict({"pretrained": "false"}).pretrained is False  # the CLI's spelling
    with pytest.raises(DataError, match="does not exist"):
        _awa(awa, pretrained=True, pretrained_weights=str(tmp_path / "absent.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(DataError, match="not a torchvision ResNet-50 state_dict"):
        _awa(awa, pretrained=True, pretrained_weights=str(wrong))

    task = _awa(awa, pretrained=True, pretrained_weights=str(resnet50_file))
    saved = torch.load(resnet50_file, weights_only=True)
    model = task.build_model()
    assert torch.equal(model.state_dict()["features.layer4.2.conv3.weight"], saved["layer4.2.conv3.weight"])
    assert model.classifier.out_features == 4
    # The model cache is keyed by the file's content, not its path.
    copy = tmp_path / "copy.pth"
    copy.write_bytes(resnet50_file.read_bytes())
    other = _awa(awa, pretrained=True, pretrained_weights=str(copy))
    assert other.training_config() == task.training_config()
    assert "pretrained_weights" not in task.training_config()
    assert task.training_config() != _awa(awa).training_config()


def test_awa2_model_takes_the_loaded_images(awa: str, awa_std: TaskData) -> None:
    task = _awa(awa)
    torch.manual_seed(0)
    model = task.build_model().eval()
    assert model.classifier.out_features == 4 and model.feature_dim == 2048
    with torch.no_grad():
        logits = model(awa_std.test.materialise())
    assert logits.shape == (len(awa_std.test), 4) and torch.isfinite(logits).all()


def test_awa2_presets_and_config_validation() -> None:
    paper, quick = AwA2Config.paper(), AwA2Config.quick()
    assert quick.epochs < paper.epochs and paper.pretrained and quick.pretrained
    assert paper.image_size == 224 and paper.n_val == 2000
    with pytest.raises(ConfigError, match="image_size"):
        AwA2Config(image_size=4)
