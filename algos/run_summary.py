"""The run summary: the reward curve (PNG), the summary JSON and the table printed at the end of a run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from treegrpo.errors import RunFileError


def plot_reward_curve(history: Sequence[Mapping[str, float]], path: str | Path,
                      evaluations: Mapping[str, Mapping[str, float]] | None = None, title: str = "") -> Path:
    """Training reward per iteration (mean +- std) and against images generated, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iterations = [h["iteration"] + 1 for h in history]
    mean = [h["reward_mean"] for h in history]
    std = [h.get("reward_std", 0.0) for h in history]
    images, total = [], 0.0
    for h in history:
        total += h.get("images", 0.0)
        images.append(total)
    figure, (by_iteration, by_images) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    by_iteration.plot(iterations, mean, color="C0", label="training reward (mean)")
    by_iteration.fill_between(iterations, [m - s for m, s in zip(mean, std, strict=True)],
                              [m + s for m, s in zip(mean, std, strict=True)], color="C0", alpha=0.15, linewidth=0)
    for marker, (name, values) in zip("os", (evaluations or {}).items(), strict=False):
        key = next((k for k in values if k.startswith("eval/")), None)
        if key is not None:
            x = 0 if name == "before" else (iterations[-1] if iterations else 0)
            by_iteration.plot([x], [values[key]], marker, color="C3", label=f"held-out {key[5:]} ({name})")
    by_iteration.set(xlabel="iteration", ylabel="reward", title=title or "reward during training")
    by_iteration.legend(fontsize=8)
    by_images.plot(images, mean, color="C1")
    by_images.set(xlabel="images generated", ylabel="training reward (mean)", title="reward vs images")
    for axis in (by_iteration, by_images):
        axis.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_json(data: object, path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically (a unique temporary file, fsynced, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def read_json(path: str | Path) -> dict:
    """A JSON object written by :func:`write_json`; anything else is a one-line :class:`RunFileError`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise RunFileError(f"train.out_dir: cannot read {path} ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"train.out_dir: {path} does not hold a JSON object")
    return data


DIVERSITY_KEY = "eval/diversity/"


def diversity_kept(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after / before`` of every held-out diversity measure (1: the policy's samples are as varied
    as the base's; near 0: each prompt's samples collapsed to one image)."""
    return {key[len(DIVERSITY_KEY):]: after[key] / before[key] for key in after
            if key.startswith(DIVERSITY_KEY) and before.get(key, 0) > 0}


def summary_table(before: Mapping[str, float], after: Mapping[str, float], training: Mapping[str, float]) -> str:
    """A plain-text table: held-out rewards and per-prompt diversity before and after (with the share
    of the base's diversity kept), then the run's totals."""
    names = [key for key in after if key.startswith("eval/")]
    kept = diversity_kept(before, after)
    width = max([len("held-out reward")] + [len(key) - 5 for key in names] + [len(key) for key in training])
    lines = [f"{'held-out reward':<{width}}  {'before':>9}  {'after':>9}  {'change':>9}"]
    for key in names:
        old, new = before.get(key, float("nan")), after[key]
        share = kept.get(key[len(DIVERSITY_KEY):]) if key.startswith(DIVERSITY_KEY) else None
        note = f"  ({share:.0%} of the base's kept)" if share is not None else ""
        lines.append(f"{key[5:]:<{width}}  {old:>9.4f}  {new:>9.4f}  {new - old:>+9.4f}{note}")
    lines.append("")
    lines += [f"{key:<{width}}  {value:>9.4g}" for key, value in training.items()]
    return "\n".join(lines)
