"""`./run_all.sh --suite paper --data-root DIR --executor slurm` end to end, at a tiny scale on fake data.

The fake CIFAR-10 (torchvision's pickled batches) and AwA2 (the official image folder) are written
here in exactly their on-disk formats; MNIST is the embedded one. The suite runs with the paper
presets, cut to a few points, one epoch, the metrics that need no retraining (retraining is covered by
tests/test_metrics_retraining.py) and two methods, through Slurm when a cluster answers (CI starts
one and must run this path) and through the local executor otherwise.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dispatch import _slurm_up

from harness import records

PROJECT = Path(__file__).resolve().parent.parent
AWA_CLASSES = ("antelope", "bat", "cow", "dolphin")


def _fake_cifar(root: Path, n_train: int = 40, n_test: int = 16) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    per = n_train // 5
    for b in range(5):
        labels = [(b * per + i) % 10 for i in range(per)]
        batch = {b"labels": labels, b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8)}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    test = {
        b"labels": [i % 10 for i in range(n_test)],
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))


def _fake_awa2(root: Path, per_class: int = 12) -> None:
    base = root / "Animals_with_Attributes2"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(AWA_CLASSES)))
    rng = np.random.default_rng(2)
    for name in AWA_CLASSES:
        (base / "JPEGImages" / name).mkdir()
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "JPEGImages" / name / f"{name}_{10001 + i}.jpg")


@pytest.mark.slow
def test_paper_suite_end_to_end_on_fake_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _fake_cifar(data)
    _fake_awa2(data)
    reason = _slurm_up()
    if reason is not None and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the paper suite through Slurm, but: {reason}")
    executor = "slurm" if reason is None else "local"
    command = [
        str(PROJECT / "run_all.sh"), "--suite", "paper", "--data-root", str(data), "--executor", executor,
        "--parallelism", "4", "--cpus-per-job", "1", "--time-limit", "20",
        "--n-train", "24", "--n-test", "6", "--methods", "random,representer",
        "--metrics", "class_detection,subclass_detection,shortcut_detection,mislabel_detection,sparsity",
        "--task-option", "epochs=1", "--task-option", "n_val=4", "--task-option", "image_size=16",
        "--task-option", "pretrained=false",
        "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=PROJECT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    found = [records.read_record(p) for p in (tmp_path / "results" / "records").glob("*.json")]
    assert len(found) == 3 * 4 * 2  # datasets x variants x methods
    assert all(r["status"] == "ok" for r in found), [r["error"] for r in found if r["status"] != "ok"]
    seen = {(r["task"]["name"], r["task"]["variant"], r["method"]["name"]) for r in found}
    assert {t for t, _, _ in seen} == {"mnist", "cifar10", "awa2"}
    for r in found:
        assert r["task"]["n_train"] == 24 and r["task"]["n_test"] == 6
        # paper presets, except the options the command line cut down
        assert r["task"]["config"]["epochs"] == 1
        wanted = {"std": {"class_detection", "sparsity"}, "group": {"subclass_detection", "class_detection"}}
        expected = wanted.get(r["task"]["variant"], {"class_detection"})
        assert expected <= set(r["metrics"])
    mislabel = [r for r in found if r["task"]["variant"] == "corrupt"]
    assert all(r["metrics"]["mislabel_detection"]["status"] == "ok" for r in mislabel)
    assert (tmp_path / "results" / "tables").is_dir()  # the report ran after the suite
