"""The range test's plot: loss against lr on a log axis, the raw losses faint, the smoothed
curve, the suggestion marked. matplotlib, without a display (Agg)."""
import math

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from utils.core.io import atomic_open  # noqa: E402


def write_plot(path, test, suggested, how, title):
    """Write the PNG `path` (atomically) for RangeTest `test` and the suggested lr."""
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        axes.plot(test.lrs, test.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss of each step")
        axes.plot(test.lrs, test.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
        at = min(range(len(test.lrs)), key=lambda i: abs(math.log(test.lrs[i] / suggested)))
        axes.scatter([suggested], [test.smoothed[at]], s=80, color="tab:red", zorder=3,
                     label=f"suggested lr {suggested:.2e} ({how})")
        axes.axvline(suggested, color="tab:red", linestyle=":", linewidth=1)
        lowest = test.minimum()
        axes.axvline(test.lrs[lowest] / 10, color="tab:grey", linestyle="--", linewidth=1,
                     label=f"a tenth of the minimum's lr: {test.lrs[lowest] / 10:.2e}")
        axes.set_xscale("log")
        # the divergence would squash the curve: show from its minimum to a little above its start
        low, start = min(test.smoothed), test.smoothed[min(len(test.smoothed) - 1, test.skip)]
        span = max(start - low, 1e-6)
        axes.set_ylim(low - 0.2 * span, max(test.smoothed[:lowest + 1]) + 0.4 * span)
        axes.set_xlabel("learning rate (log scale)")
        axes.set_ylabel("training loss")
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
        figure.tight_layout()
        with atomic_open(path, "wb") as handle:
            figure.savefig(handle, format="png")
    finally:
        plt.close(figure)


def write_points(path, test):
    """The test's points as csv (lr, loss, smoothed loss), atomically."""
    with atomic_open(path, "w") as handle:
        handle.write("lr,loss,smoothed_loss\n")
        handle.writelines(f"{lr:.6e},{loss:.6f},{smooth:.6f}\n" for lr, loss, smooth in
                          zip(test.lrs, test.losses, test.smoothed))
