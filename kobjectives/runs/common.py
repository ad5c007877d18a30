"""What every training run shares: schedules, callbacks, run-folder outputs."""

import json
import pathlib

import keras
import numpy as np


def warmup_cosine_schedule(learning_rate, steps, warmup_steps):
    """Linear warm-up to `learning_rate`, then cosine decay to 0 at `steps`."""
    warmup_steps = min(warmup_steps, max(steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(steps - warmup_steps, 1),
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def run_callbacks(out_dir):
    """Checkpoints each round and TensorBoard logs, in the run folder."""
    out_dir = pathlib.Path(out_dir)
    return [
        keras.callbacks.ModelCheckpoint(
            str(out_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs")),
        keras.callbacks.TerminateOnNaN(),
    ]


def plot_history(history, path, title, steps_per_round=None):
    """Writes a PNG of the training and validation loss after each round
    (epoch); with `steps_per_round` the x axis counts training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history:
            x = np.arange(1, len(history[key]) + 1) * (steps_per_round or 1)
            ax.plot(x, history[key], marker="o", label=label)
    ax.set_xlabel(
        "training step (train: mean over the preceding round)"
        if steps_per_round else "round (epoch)"
    )
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path, payload):
    def default(value):
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        raise TypeError(f"not JSON serializable: {type(value).__name__}")

    pathlib.Path(path).write_text(json.dumps(payload, indent=2, default=default) + "\n")
