"""The tutorial scripts under examples/ run on a CPU with small settings and print numbers that show they worked.

Each script runs as a subprocess, the way a reader runs it; the test parses what it prints. The
``tree_advantages.py`` example is tested in ``tests/test_packaging.py``; ``distributed_training.py``
has its own test with the multi-GPU code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from treegrpo.envs import tree_nfe

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def run_example(script: str, *args: str, cwd: Path) -> str:
    """Run ``examples/<script>`` and return its stdout; a failure shows the end of its stderr."""
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def improved(first: float, last: float, by: float) -> bool:
    return last > first + by


def test_compose_treegrpo_trains_and_counts_the_tree(tmp_path):
    out = run_example("compose_treegrpo.py", "--iterations", "16", cwd=tmp_path)
    pattern = (rf"iteration +(\d+)  reward ({NUMBER})  window \(([\d, ]+)\)  parents (\d+)  edges (\d+)  nfe (\d+)  "
               rf"last-pass ratio ({NUMBER}) clipped ({NUMBER})")
    rows = re.findall(pattern, out)
    assert len(rows) == 16, out
    prompts, k, d, steps = 4, 3, 3, 8
    for _, _, window, parents, edges, nfe, ratio, _ in rows:
        start, *rest = (int(s) for s in window.split(","))
        assert rest == [start + 1, start + 2]
        assert int(parents) == prompts * (1 + k + k**2)  # one row per internal window node
        assert int(edges) == prompts * (k + k**2 + k**3)
        assert int(nfe) == prompts * tree_nfe(steps, k, d, start)
        assert abs(float(ratio) - 1) < 0.2  # the second pass moved the policy a little, within the clip
    rewards = [float(row[1]) for row in rows]
    assert improved(sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4, by=0.3), rewards


def train_with_the_swap_loss_plugin(out_dir: Path, algorithm: str, *options: str) -> dict:
    """``treegrpo train`` on toy2d with ``examples/swap_loss.py`` as plugin and ``algorithm`` one of its
    losses; returns the run's summary."""
    from treegrpo import cli

    argv = ["train", "--plugin", str(REPO / "examples" / "swap_loss.py"), "--model.kind", "toy2d",
            "--loss.algorithm", algorithm, *options, "--train.out_dir", str(out_dir)]
    assert cli.main(argv) == 0
    return json.loads((out_dir / "summary.json").read_text())


def test_a_loss_registered_by_a_plugin_is_selectable_by_name_from_the_cli(tmp_path, capsys):
    from treegrpo import cli
    from treegrpo.algos.losses import LOSSES

    summary = train_with_the_swap_loss_plugin(tmp_path / "run", "clip_higher", "--loss.clip_high", "0.3",
                                              "--train.iterations", "2")
    assert LOSSES["clip_higher"].__name__ == "ClipHigherLoss"
    assert summary["config"]["loss"]["algorithm"] == "clip_higher" and summary["training"]["iterations"] == 2
    assert cli.main(["train", "--plugin", str(tmp_path / "none.py")]) == 2
    assert "--plugin: no such file" in capsys.readouterr().err


def test_swap_loss_five_distinct_objectives_four_share_the_gradient_at_the_behaviour_policy(tmp_path):
    out = run_example("swap_loss.py", "--iterations", "8", cwd=tmp_path)
    norms = [float(n) for n in re.findall(rf"at the behaviour policy .* gradient norm ({NUMBER})", out)]
    assert len(norms) == 5 and max(norms) > 0, out
    same, preference = norms[:4], norms[4]
    assert max(same) - min(same) <= 1e-5 * max(same), norms  # at ratio 1 each is -A grad log pi
    assert abs(preference - same[0]) > 0.1 * same[0], norms  # the pairwise loss reads only the order
    trained = re.findall(rf"trained  (.+?) +reward ({NUMBER}) -> ({NUMBER})", out)
    assert [name for name, _, _ in trained] == ["ppo-clip (TreeGRPO)", "ppo-clip + KL (GRPO)", "reinforce",
                                                "clip-higher (custom)", "sibling preference (custom)"], out
    for name, first, last in trained:
        assert improved(float(first), float(last), by=0.3), (name, first, last)


def test_a_plugin_loss_takes_its_own_options_from_the_command_line(tmp_path, capsys):
    from treegrpo import cli
    from treegrpo.algos import Config, build_loss
    from treegrpo.algos.losses import LOSSES
    from treegrpo.problems import build_problem

    summary = train_with_the_swap_loss_plugin(tmp_path / "run", "sibling_preference", "--loss.options", "beta=20",
                                              "--train.iterations", "1")
    assert LOSSES["sibling_preference"].__name__ == "SiblingPreferenceLoss"
    assert summary["config"]["loss"]["options"] == ["beta=20"]
    config = Config().override(["model.kind=toy2d", "loss.algorithm=sibling_preference", "loss.options=beta=20"])
    assert build_loss(config, build_problem(config), None).beta == 20.0  # typed from the constructor: a float
    capsys.readouterr()
    argv = ["train", "--plugin", str(REPO / "examples" / "swap_loss.py"), "--model.kind", "toy2d",
            "--loss.algorithm", "sibling_preference", "--loss.options", "gamma=1"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("loss.options: SiblingPreferenceLoss has no option 'gamma'; its options: beta"), error
