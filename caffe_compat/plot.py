"""Loss and learning-rate curves of a ``caffekt train`` log (``plot_log``, behind ``caffekt plot``).

Panels: loss and smoothed loss against the iteration, the learning rate
(log scale when it stays positive), and the test outputs when the log has
any.  Drawn with matplotlib's Agg backend (no display needed) and written
atomically.
"""
from __future__ import annotations

import os


def plot_log(log: str, output: str, dpi: int = 100) -> int:
    """Draw ``log`` into ``output`` (format from its extension); returns the bytes written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .files import atomic_output
    from .errors import CaffeFormatError
    from .logs import read_log

    cols = read_log(log)
    it = cols["iter"]
    train = ~np.isnan(cols["loss"])
    if not train.any():
        raise CaffeFormatError("the training log has no iterations to plot", log)
    tests = [c for c in cols if c.startswith("test")]
    fig, axes = plt.subplots(2 + bool(tests), 1, figsize=(8, 3 * (2 + bool(tests))), sharex=True)
    ax = axes[0]
    ax.plot(it[train], cols["loss"][train], lw=0.8, alpha=0.5, label="loss")
    if "smoothed_loss" in cols:
        ax.plot(it[train], cols["smoothed_loss"][train], lw=1.5, label="smoothed loss")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax = axes[1]
    lr = cols["lr"][train]
    ax.plot(it[train], lr, color="tab:green", drawstyle="steps-post")   # lr holds for a whole iteration
    if (lr > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    if tests:
        ax = axes[2]
        for c in tests:
            ok = ~np.isnan(cols[c])
            ax.plot(it[ok], cols[c][ok], marker="o", ms=3, label=c)
        ax.set_ylabel("test outputs")
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("iteration")
    fig.suptitle(os.path.basename(log))
    fig.tight_layout()
    ext = os.path.splitext(output)[1].lstrip(".").lower() or "png"
    with atomic_output(output) as f:
        fig.savefig(f, format=ext, dpi=dpi)
    plt.close(fig)
    return os.path.getsize(output)

