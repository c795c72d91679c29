"""The demo's pictures: learning curves per arm, and Grad-CAM overlays on test scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xgal.demo.report import Results


def plot_curves(all_results: Results, path: Path, data: str) -> None:
    """Accuracy and CAM–ROI Dice against labelled count, one line per arm (mean over seeds, a
    ± 1 std band when there are several); `data` names the pool in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = next(iter(all_results.values())).keys()
    for arm in arms:
        runs = [s[arm] for s in all_results.values()]
        x = [r.labelled for r in runs[0]]
        for ax, key in zip(axes, ("accuracy", "cam_dice"), strict=True):
            vals = np.array([[getattr(r, key) for r in run] for run in runs])
            ax.plot(x, vals.mean(0), marker="o", label=arm)
            if len(runs) > 1:
                ax.fill_between(
                    x, vals.mean(0) - vals.std(0, ddof=1), vals.mean(0) + vals.std(0, ddof=1), alpha=0.15
                )
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("CAM-ROI Dice (true class, test)")
    for ax in axes:
        ax.set_xlabel("labelled samples")
        ax.grid(alpha=0.3)
    axes[0].legend()
    n = len(all_results)
    fig.suptitle(f"xgal demo, {data}: " + (f"mean ± std over {n} seeds" if n > 1 else "one seed"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overlays(images: np.ndarray, rois: np.ndarray, cams: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["scan + expert ROI", *cams]
    fig, axes = plt.subplots(len(images), len(cols), figsize=(2.2 * len(cols), 2.2 * len(images)))
    for i in range(len(images)):
        axes[i, 0].imshow(images[i, 0], cmap="gray")
        axes[i, 0].contour(rois[i], levels=[0.5], colors="lime", linewidths=0.8)
        for j, cam in enumerate(cams.values(), start=1):
            axes[i, j].imshow(images[i, 0], cmap="gray")
            axes[i, j].imshow(cam[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].contour(rois[i], levels=[0.5], colors="lime", linewidths=0.8)
    for j, title in enumerate(cols):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
