"""`treegrpo train` and `treegrpo eval` through the CLI on the tiny Wan2.1 (video) and Qwen-Image pipelines,
from the shipped configs (configs/wan21_t2v_1.3b.yaml, configs/qwen_image.yaml) shrunk to a CPU run, with
tiny random-weight reward models: the kinds the families register, their presets and options, and the
video rewards scoring Wan's videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treegrpo.cli import main
from treegrpo.problems.lora import LORA_FILE

REPO = Path(__file__).resolve().parents[3]
CONFIGS = {"wan": REPO / "configs" / "wan21_t2v_1.3b.yaml", "qwen_image": REPO / "configs" / "qwen_image.yaml"}


@pytest.fixture(scope="module")
def tiny_pipelines(tmp_path_factory) -> dict[str, Path]:
    from treegrpo.testing.qwen_image import save_tiny_qwen_image_pipeline
    from treegrpo.testing.wan import save_tiny_wan_pipeline

    root = tmp_path_factory.mktemp("families")
    return {"wan": save_tiny_wan_pipeline(root / "wan"), "qwen_image": save_tiny_qwen_image_pipeline(root / "qwen")}


def overrides(kind: str, path: Path, prompts: Path, out: Path, rewards: Path) -> list[str]:
    """The shipped config shrunk like test_training.tiny_overrides: 32 pixels (5 frames for Wan), 2 steps,
    k = d = 2, 2 prompts, 1 iteration, LoRA of rank 4, the configs' reward from a tiny checkpoint."""
    from treegrpo.testing.qwen_image import IMAGE_SIZE as QWEN_SIZE
    from treegrpo.testing.wan import IMAGE_SIZE as WAN_SIZE
    from treegrpo.testing.wan import NUM_FRAMES

    video = [f"model.image_size={WAN_SIZE}", f"model.num_frames={NUM_FRAMES}", "model.max_sequence_length=16"]
    image = [f"model.image_size={QWEN_SIZE}", "model.max_sequence_length=48"]
    return [
        f"model.reward_dir={rewards}", f"model.path={path}", f"model.prompts={prompts}",
        *(video if kind == "wan" else image), "model.frozen_precision=fp32",
        f"model.embedding_cache={out / 'embeddings'}", "model.eval_count=2", "sampling.num_steps=2",
        "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2", "sampling.max_batch=0",
        "sampling.window=fixed", "sampling.window_start=0", "sampling.guidance_scale=1.0",
        "train.iterations=1", "train.device=cpu", "train.precision=fp32", f"train.out_dir={out}",
        "train.lora_rank=4", "train.lora_alpha=8", "train.gradient_checkpointing=false", "train.minibatch_parents=4",
        "train.checkpoint_every=1000", "train.sample_every=1", "eval.num_steps=2", "eval.samples_per_prompt=2",
        "optim.lr=1e-3", "loss.clip_range=0.2",
    ]


def _flags(assignments: list[str]) -> list[str]:
    flags: list[str] = []
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        flags += {"true": [f"--{key}"], "false": [f"--no-{key}"]}.get(value, [f"--{key}", value])
    return flags


@pytest.mark.filterwarnings("ignore:model.eval_prompts")
@pytest.mark.parametrize("kind", ["wan", "qwen_image"])
def test_train_and_eval_through_the_cli(kind, tiny_pipelines, prompt_file, reward_root, tmp_path, capsys):
    run = tmp_path / "run"
    settings = overrides(kind, tiny_pipelines[kind], prompt_file, run, reward_root)
    assert main(["train", "--config", str(CONFIGS[kind]), *_flags(settings)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    reward = "hpsv2_frames" if kind == "wan" else "hpsv2"  # the configs' rewards
    assert summary["config"]["model"]["kind"] == kind and summary["config"]["model"]["rewards"] == [reward]
    assert summary["training"]["edges_trained"] > 0 and f"eval/{reward}" in summary["after"]
    assert (run / "final" / LORA_FILE).is_file()
    assert list(run.rglob("*.png"))  # the sample grid (Wan: each video's frames side by side)
    capsys.readouterr()

    evaluated = tmp_path / "evaluated"  # an out_dir without the run's checkpoints: rows base and + lora only
    evaluation = [*(o.replace(str(run), str(evaluated)) for o in settings), f"model.lora={run / 'final' / LORA_FILE}",
                  f"eval.out={tmp_path / 'eval.json'}"]
    if kind == "wan":
        evaluation.append("eval.rewards=hpsv2_frames,clipscore_frames,temporal_consistency")
    assert main(["eval", "--config", str(CONFIGS[kind]), *_flags(evaluation)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert [row["policy"] for row in result["rows"]] == ["base", f"+ lora {LORA_FILE}"]
    scores = result["rows"][0]["rewards"]
    expected = ["hpsv2_frames", "clipscore_frames", "temporal_consistency"] if kind == "wan" else ["hpsv2"]
    assert set(scores) == {*expected, "diversity/clip"}
    assert all(scores[name]["mean"] == scores[name]["mean"] for name in scores)  # finite, not NaN


def test_image_rewards_are_refused_for_a_video_family_and_video_ones_for_an_image_family(tiny_pipelines, prompt_file,
                                                                                         reward_root, tmp_path, capsys):
    settings = overrides("wan", tiny_pipelines["wan"], prompt_file, tmp_path, reward_root)
    assert main(["train", "--config", str(CONFIGS["wan"]), *_flags(settings), "--model.rewards", "hpsv2"]) == 2
    err = capsys.readouterr().err
    assert "model.rewards: unknown reward 'hpsv2' for the wan model" in err and "hpsv2_frames" in err
    settings = overrides("qwen_image", tiny_pipelines["qwen_image"], prompt_file, tmp_path, reward_root)
    assert main(["train", "--config", str(CONFIGS["qwen_image"]), *_flags(settings),
                 "--model.rewards", "hpsv2_frames"]) == 2
    assert "unknown reward 'hpsv2_frames' for the qwen_image model" in capsys.readouterr().err
