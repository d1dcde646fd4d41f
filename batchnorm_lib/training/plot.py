"""Loss and accuracy curves of one or more runs, as a PNG (matplotlib, headless)."""

from batchnorm_lib.training.data import MissingExtraError

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("matplotlib") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_curves(results, path, title=None):
    """Two panels: loss and accuracy per epoch (train solid, test dashed in both)
    for each RunResult in ``results``; written to ``path``."""
    plt = require_matplotlib()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for result, color in zip(results, COLORS):
        epochs = [h.epoch for h in result.history]
        ax_loss.plot(epochs, [h.train_loss for h in result.history], color=color,
                     label="%s train" % result.name)
        ax_loss.plot(epochs, [h.test_loss for h in result.history], color=color, linestyle="--",
                     label="%s test" % result.name)
        ax_acc.plot(epochs, [h.train_acc for h in result.history], color=color,
                    label="%s train" % result.name)
        ax_acc.plot(epochs, [h.test_acc for h in result.history], color=color, linestyle="--",
                    label="%s test" % result.name)
    ax_loss.set_yscale("log")
    ax_loss.set_title("cross-entropy loss")
    ax_acc.set_title("accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
