"""Where a run reports: metrics.jsonl (one object per step), TensorBoard event files,
optional Weights & Biases, and a progress bar with the numbers a user watches."""

from __future__ import annotations

import json
import math
import os

from tqdm import tqdm


class MetricsWriter:
    def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, wandb_project: str = "", enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if tensorboard:
            from tensorboardX import SummaryWriter

            # a resumed run tells TensorBoard to drop what an earlier process logged
            # past the checkpoint, so no step shows twice
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=start_step + 1 if start_step else None)
        if wandb_project:
            import wandb  # optional; installed by the user

            self._wandb = wandb.init(project=wandb_project, dir=workdir, resume="allow")
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        for k, v in metrics.items():
            if self._tb is not None and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(
            reward=f"{metrics.get('reward_mean', math.nan):.3f}",
            kl=f"{metrics.get('kl', math.nan):.4f}",
            step_s=f"{metrics.get('time_step_s', math.nan):.1f}",
        )

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            if self._tb is not None:
                self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()


def truncate_log(path: str, last_step: int) -> None:
    """Drops lines past `last_step` (written after the checkpoint a resume starts from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with open(path, "w") as f:
        f.writelines(keep)
