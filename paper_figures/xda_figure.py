"""The XDA figure of DualXDA: a test point, its LRP heatmap, and why its proponents and opponents matter.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, section "XDA"). The
layout follows the paper's figure: the test image and its LRP heatmap in the middle column; the
strongest proponents on the left and the strongest opponents on the right, each with its
attribution value ``a_i``, its training image, the XDA heatmap on the training image and the XDA
heatmap on the test image (red positive, blue negative, a symmetric colour scale per heatmap). With
a region (the watermark of the mark variant) its outline is drawn on every heatmap and each heatmap
is annotated with the share of its relevance of the attribution's sign (positive for the test
point and the proponents, negative for the opponents) inside the region.

Drawn from what ``dabench xda`` writes (:mod:`dabench.xda_command`) alone: the JSON record and the
arrays beside it (``.npz``: ``test_input``, ``test_heatmap``, ``train_inputs``, ``train_heatmaps``,
``test_heatmaps``, optional ``region``). Redraw a figure with::

    python -m paper_figures.xda_figure results/xda/mnist-mark-dualda-test12-EpsilonPlusFlat.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Blue (negative) - white - red (positive).
HEATMAP_CMAP = "bwr"
FORMATS = ("png", "pdf")


def load_xda(json_path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The record and its arrays (the ``.npz`` named in ``record["files"]["arrays"]``, same folder)."""
    path = Path(json_path)
    record = json.loads(path.read_text())
    arrays_name = Path(record["files"]["arrays"]).name
    with np.load(path.with_name(arrays_name)) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return record, arrays


def draw_xda_figure(
    record: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    stem: str | os.PathLike[str],
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Draw the figure and write ``<stem>.png`` and ``<stem>.pdf`` (atomically).

    Parameters
    ----------
    record:
        The XDA record (keys ``test``, ``xda``, ``task``, ``method``).
    arrays:
        ``test_input`` ``(*input_shape)``, ``test_heatmap`` ``(*input_shape)``, ``train_inputs``,
        ``train_heatmaps``, ``test_heatmaps`` ``(m, *input_shape)`` (proponents then opponents, as
        in the record), optional ``region`` ``(*spatial)`` bool.
    stem:
        Output path without suffix.

    Returns
    -------
    list[Path]
        The files written.
    """
    from matplotlib.figure import Figure

    xda = record["xda"]
    proponents, opponents = xda["proponents"], xda["opponents"]
    n_pro = len(proponents)
    rows = max(n_pro, len(opponents), 1)
    region = arrays.get("region")
    fig = Figure(figsize=(12.5, 1.9 * rows + 1.2), layout="constrained")
    grid = fig.add_gridspec(2 * rows, 7, width_ratios=[1, 1, 1, 1.6, 1, 1, 1])

    test = record["test"]
    centre_top = fig.add_subplot(grid[:rows, 3])
    _image(centre_top, arrays["test_input"])
    centre_top.set_title(
        f"test #{test['index']}: label {test['true_label']}, predicted {test['prediction']}", fontsize=9
    )
    centre_bottom = fig.add_subplot(grid[rows:, 3])
    heat_title = "LRP heatmap"
    if xda.get("region"):
        heat_title += f"\nin mark: {_percent(xda['region']['test_heatmap_share'])}"
    _heatmap(centre_bottom, arrays["test_heatmap"], region)
    centre_bottom.set_title(heat_title, fontsize=9)

    sides = ((proponents, 0, (0, 1, 2), "proponent"), (opponents, n_pro, (6, 5, 4), "opponent"))
    for pairs, offset, (col_image, col_train, col_test), kind in sides:
        for j, pair in enumerate(pairs):
            m = offset + j
            rows_j = slice(2 * j, 2 * j + 2)
            ax = fig.add_subplot(grid[rows_j, col_image])
            _image(ax, arrays["train_inputs"][m])
            label = "" if pair.get("train_label") is None else f", label {pair['train_label']}"
            ax.set_title(f"{kind} #{pair['train_index']}{label}\na = {pair['attribution']:+.3g}", fontsize=8)
            for col, key, side, share_key in (
                (col_train, "train_heatmaps", "on training image", "train_region_share"),
                (col_test, "test_heatmaps", "on test image", "test_region_share"),
            ):
                ax = fig.add_subplot(grid[rows_j, col])
                _heatmap(ax, arrays[key][m], region)
                title = f"XDA {side}"
                if pair.get(share_key) is not None:
                    title += f"\nin mark: {_percent(pair[share_key])}"
                ax.set_title(title, fontsize=8)

    task, method = record["task"], record["method"]
    title = (
        f"XDA: {method['name']} on {task['name']}/{task['variant']}, composite {xda['composite']} "
        f"- proponents (left), opponents (right)"
    )
    if xda.get("region"):
        title += (
            f"\nthe watermark (outlined) covers {_percent(xda['region']['pixel_share'])} of the pixels; "
            "'in mark': share of the relevance of the attribution's sign inside it"
        )
    fig.suptitle(title, fontsize=10)

    written = []
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=150)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def _as_picture(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` in [0, 1] from an input ``(C, H, W)`` or ``(d,)`` (min-max scaled)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, None, :]
    if x.ndim == 2:
        x = x[None]
    picture = x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)
    low, high = picture.min(), picture.max()
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture)


def _image(ax: Any, x: np.ndarray) -> None:
    picture = _as_picture(x)
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    _frame(ax)


def _heatmap(ax: Any, heat: np.ndarray, region: np.ndarray | None) -> None:
    """Channels summed; red positive, blue negative, symmetric scale ``[-max|h|, max|h|]``."""
    h = np.asarray(heat, dtype=np.float64)
    if h.ndim == 1:
        h = h[None, :]
    elif h.ndim == 3:
        h = h.sum(axis=0)
    bound = float(np.abs(h).max()) or 1.0
    ax.imshow(h, cmap=HEATMAP_CMAP, vmin=-bound, vmax=bound)
    if region is not None and np.asarray(region).shape == h.shape:
        ax.contour(np.asarray(region, dtype=float), levels=[0.5], colors="k", linewidths=0.4)
    _frame(ax)


def _frame(ax: Any) -> None:
    """No ticks, but a thin grey frame: white image borders stay visible on the white page."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.6")
        spine.set_linewidth(0.6)


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redraw an XDA figure from its record (JSON + .npz).")
    parser.add_argument("record", help="the .json written by `dabench xda`")
    parser.add_argument("--out", default=None, help="output path without suffix (default: beside the record)")
    args = parser.parse_args(argv)
    record, arrays = load_xda(args.record)
    stem = args.out or str(Path(args.record).with_suffix(""))
    for path in draw_xda_figure(record, arrays, stem):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
