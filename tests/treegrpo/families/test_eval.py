"""`treegrpo eval` on a tiny SD3 pipeline with tiny reward models: the paper's columns, a LoRA row
paired with the base row, and a checkpoint row."""

from __future__ import annotations

import json

import torch

from tests.treegrpo.families.test_training import CONFIGS, tiny_overrides
from treegrpo.algos.checkpoint import latest_checkpoint
from treegrpo.algos.evaluation import held_out_scores
from treegrpo.cli import main
from treegrpo.config import Config
from treegrpo.problems import build_problem
from treegrpo.problems.lora import LORA_FILE

PAPER = ["hpsv2", "imagereward", "aesthetic", "clipscore"]


def _flags(assignments: list[str]) -> list[str]:
    flags = []
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        flags += {"true": [f"--{key}"], "false": [f"--no-{key}"]}.get(value, [f"--{key}", value])
    return flags


def test_eval_scores_base_lora_and_checkpoint_with_every_paper_reward(pipelines, prompt_file, reward_root, tmp_path,
                                                                      capsys):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, train_dir, lora=True, rewards=reward_root)
    assert main(["train", "--config", str(CONFIGS["sd3"]), *_flags(overrides), "--train.checkpoint_every", "1"]) == 0
    lora = train_dir / "final" / LORA_FILE
    capsys.readouterr()

    # the exported LoRA, on the paper's four rewards plus PickScore, 3 samples per held-out prompt
    evaluation = [o.replace(str(train_dir), str(eval_dir)) for o in overrides]
    evaluation += [f"model.lora={lora}", "eval.rewards=pickscore,clipscore,aesthetic,imagereward,hpsv2",
                   "eval.samples_per_prompt=3", f"eval.out={eval_dir / 'lora.json'}"]
    assert main(["eval", "--config", str(CONFIGS["sd3"]), *_flags(evaluation)]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("policy"))
    titles = ["HPSv2.1", "ImageReward", "Aesthetic", "CLIPScore", "PickScore"]
    assert [header.index(t) for t in titles] == sorted(header.index(t) for t in titles)  # the paper's order
    result = json.loads((eval_dir / "lora.json").read_text())
    assert [row["policy"] for row in result["rows"]] == ["base", f"+ lora {LORA_FILE}"]
    assert result["prompts"] == 2 and result["samples_per_prompt"] == 3
    assert result["rewards"] == [*PAPER, "pickscore", "diversity/clip"]  # diversity after the rewards
    base, tuned = (row["rewards"] for row in result["rows"])
    assert set(base) == {*PAPER, "pickscore", "diversity/clip"} and base["diversity/clip"]["mean"] > 0
    assert any(abs(tuned[r]["mean"] - base[r]["mean"]) > 1e-6 for r in PAPER)  # the LoRA changes the images
    for name in PAPER:  # same noise: the paired mean is the difference of the row means
        paired = result["rows"][1]["vs_base"][name]["mean"]
        assert abs(paired - (tuned[name]["mean"] - base[name]["mean"])) < 1e-9

    # the base row is what the pipeline without the LoRA scores from the same seed
    config = Config.from_yaml(CONFIGS["sd3"]).override([*evaluation[:-1], "model.lora="])
    problem = build_problem(config)
    reference = held_out_scores(problem, config)
    for j, name in enumerate(reference.names):
        assert abs(base[name]["mean"] - float(reference.scores[:, j].mean())) < 1e-6, name
    # diversity: the mean pairwise distance of the unit CLIP embeddings (clipscore's model) of each prompt's images
    from treegrpo.envs import sample_forest
    from treegrpo.rewards import build_reward

    clip = build_reward("clipscore", root=reward_root)
    generator = torch.Generator().manual_seed(config.train.seed + 1)
    cond, ids = problem.eval_prompts()
    rollout = sample_forest(problem.model, problem.transition, cond, sde_steps=(), branching=(), trees_per_prompt=3,
                            latent_shape=problem.latent_shape, num_prompts=int(ids.shape[0]), generator=generator)
    units = torch.nn.functional.normalize(clip.image_embeddings(problem.decode(rollout.final)).double(), dim=-1)
    per_prompt = [torch.pdist(units[3 * q:3 * q + 3]).mean() for q in range(int(ids.shape[0]))]
    assert abs(base["diversity/clip"]["mean"] - float(torch.stack(per_prompt).mean())) < 1e-5

    # a training checkpoint is a row of its own
    ckpt = latest_checkpoint(train_dir)
    assert main(["eval", "--config", str(CONFIGS["sd3"]), *_flags(overrides), "--checkpoint", str(ckpt),
                 "--eval.rewards", "hpsv2,imagereward", "--eval.num_steps", "3", "--no-eval.base"]) == 0
    result = json.loads((train_dir / "eval.json").read_text())
    assert [row["policy"] for row in result["rows"]] == ["checkpoint 1"] and result["num_steps"] == 3
    assert set(result["rows"][0]["rewards"]) == {"hpsv2", "imagereward", "diversity/clip"}


def test_eval_steps_change_the_samples(pipelines, prompt_file, reward_root, tmp_path):
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path, lora=True, rewards=reward_root)
    scores = {}
    for steps in (0, 2):
        config = Config.from_yaml(CONFIGS["sd3"]).override([*overrides, f"eval.num_steps={steps}"])
        scores[steps] = held_out_scores(build_problem(config), config, samples_per_prompt=1).scores
    assert not torch.allclose(scores[0], scores[2])


def test_flux_trains_and_evaluates_through_the_cli(pipelines, prompt_file, reward_root, tmp_path, capsys):
    """`treegrpo train/eval --config configs/flux_dev.yaml`, shrunk: bf16 base with float32 LoRA, distilled
    guidance with true CFG on top (two forwards per row), then base and LoRA rows on the paper's rewards."""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    overrides = tiny_overrides(pipelines["flux"], prompt_file, train_dir, lora=True, rewards=reward_root)
    overrides = [o for o in overrides if not o.startswith("train.precision")]
    overrides += ["train.precision=bf16", "sampling.true_cfg_scale=2.0", "model.negative_prompt=blurry",
                  "sampling.window=fixed", "sampling.window_start=1"]
    assert main(["train", "--config", str(CONFIGS["flux"]), *_flags(overrides)]) == 0
    summary = json.loads((train_dir / "summary.json").read_text())
    assert summary["config"]["sampling"]["guidance_scale"] == 3.5  # the config's distilled guidance
    # per prompt: 1 prefix row, window rows 1 and 2, then 4 leaves x 1 step; true CFG doubles every row
    assert summary["training"]["nfe_sampled"] == 2 * (1 + 1 + 2 + 4 * 1) * 2
    capsys.readouterr()

    lora = train_dir / "final" / LORA_FILE
    evaluation = [o.replace(str(train_dir), str(eval_dir)) for o in overrides]
    evaluation += [f"model.lora={lora}", f"eval.rewards={','.join(PAPER)}", "eval.samples_per_prompt=2"]
    assert main(["eval", "--config", str(CONFIGS["flux"]), *_flags(evaluation)]) == 0
    assert "HPSv2.1" in capsys.readouterr().out
    result = json.loads((eval_dir / "eval.json").read_text())
    assert [row["policy"] for row in result["rows"]] == ["base", f"+ lora {LORA_FILE}"]
    base, tuned = (row["rewards"] for row in result["rows"])
    assert set(base) == {*PAPER, "diversity/clip"}
    assert any(abs(tuned[r]["mean"] - base[r]["mean"]) > 1e-6 for r in PAPER)  # the LoRA changes the images


def test_true_cfg_on_a_model_without_distilled_guidance_is_refused_before_loading(pipelines, prompt_file,
                                                                                  reward_root, tmp_path, capsys):
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path, lora=True, rewards=reward_root)
    assert main(["train", "--config", str(CONFIGS["sd3"]), *_flags(overrides), "--sampling.true_cfg_scale", "2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sampling.true_cfg_scale" in error[0] and "model.kind=flux" in error[0]


def test_held_out_scores_use_the_official_preprocessing(pipelines, prompt_file, reward_root, tmp_path):
    """Evaluation scores through for_evaluation (exact mode); training rewards keep the fast mode."""
    from tests.treegrpo.families.conftest import PROMPTS
    from treegrpo.rewards import build_reward, for_evaluation

    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path, lora=True, rewards=reward_root)
    config = Config.from_yaml(CONFIGS["sd3"]).override([*overrides, "model.rewards=imagereward",
                                                        "eval.rewards=imagereward,hpsv2"])
    problem = build_problem(config)
    final = torch.randn(2, *problem.latent_shape, generator=torch.Generator().manual_seed(3))
    images, held_out = problem.decode(final), PROMPTS[4:]
    imagereward, hpsv2 = (build_reward(name, root=reward_root) for name in ("imagereward", "hpsv2"))
    exact = torch.stack([for_evaluation(imagereward)(images, held_out), for_evaluation(hpsv2)(images, held_out)], -1)
    torch.testing.assert_close(problem.eval_reward(final, torch.arange(2)), exact, rtol=1e-5, atol=1e-6)
    fast = imagereward(images, PROMPTS[:2])
    torch.testing.assert_close(problem.reward(final, torch.arange(2))[:, 0], fast, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(for_evaluation(imagereward)(images, PROMPTS[:2]), fast, rtol=0, atol=1e-7)
