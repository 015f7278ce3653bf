"""Draw the demo's learning curves from its own TensorBoard event files (makes docs/img/char_lm_curves.png).

    overdrive launch --num_processes 2 examples/train_char_lm.py --project_dir runs/char_lm
    python docs/plot_curves.py runs/char_lm/char_lm docs/img/char_lm_curves.png

Needs tensorboard (to read the event files) and matplotlib (to draw); neither is an overdrive dependency.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main(run_dir: str, out: str) -> None:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for tag, label in (("train/loss", "train loss (every 25 steps)"), ("eval/loss", "eval loss (per epoch)")):
        points = events.Scalars(tag)
        left.plot([p.step for p in points], [p.value for p in points], marker="o" if "eval" in tag else None,
                  label=label)
    left.set_xlabel("optimizer step")
    left.set_ylabel("cross-entropy")
    left.legend()
    accuracy = events.Scalars("eval/accuracy")
    right.plot([p.step for p in accuracy], [p.value for p in accuracy], marker="o", color="tab:green")
    right.set_xlabel("optimizer step")
    right.set_ylabel("eval next-char accuracy")
    fig.suptitle("examples/train_char_lm.py, 2 processes on CPU (read from its TensorBoard event files)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
