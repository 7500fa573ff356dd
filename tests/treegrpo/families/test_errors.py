"""A pipeline run's bad inputs are one line, before the pipeline loads."""

from __future__ import annotations

import pytest

from tests.treegrpo.families.test_training import CONFIGS, tiny_overrides
from treegrpo.cli import main


def _flags(assignments: list[str]) -> list[str]:
    return [f"--set={assignment}" for assignment in assignments]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("treegrpo: error: "), lines
    return lines[0][len("treegrpo: error: "):]


@pytest.mark.parametrize(("case", "starts"), [
    ("empty", "prompts: {prompts} holds no prompts"),
    ("latin-1", "prompts: {prompts} is not UTF-8 text"),
    ("too few", "sampling.prompts_per_iteration: 2 is more than the 1 training prompts"),
    ("bad json", "prompts: {prompts} is not valid JSON"),
])
def test_prompt_files_that_cannot_train_are_one_line(pipelines, reward_root, tmp_path, capsys, case, starts):
    prompts = tmp_path / ("prompts.json" if case == "bad json" else "prompts.txt")
    content = {"empty": b"\n  \n", "latin-1": "caf\xe9 au lait\n".encode("latin-1"), "too few": b"a red cat\n",
               "bad json": b"[\"a red cat\", "}[case]
    prompts.write_bytes(content)
    overrides = tiny_overrides(pipelines["sd3"], prompts, tmp_path / "run", lora=True, rewards=reward_root)
    message = _error(capsys, ["train", "--config", str(CONFIGS["sd3"]), *_flags(overrides)])
    assert message.startswith(starts.format(prompts=prompts)), message


def test_an_image_size_the_pipeline_cannot_make_is_one_line(pipelines, prompt_file, reward_root, tmp_path, capsys):
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path / "run", lora=True, rewards=reward_root)
    message = _error(capsys, ["train", "--config", str(CONFIGS["sd3"]), *_flags([*overrides, "model.image_size=18"])])
    assert message.startswith("model.image_size: 18 is not a multiple of 4")


def test_a_missing_reward_file_is_one_line_before_the_pipeline_loads(pipelines, prompt_file, tmp_path, capsys,
                                                                     monkeypatch):
    from treegrpo.problems import text_to_image as t2i

    loaded = []
    monkeypatch.setattr(t2i, "load_pipeline", lambda *a, **k: loaded.append(a) or pytest.fail("loaded the pipeline"))
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path / "run", lora=True, rewards=tmp_path / "none")
    message = _error(capsys, ["train", "--config", str(CONFIGS["sd3"]), *_flags(overrides)])
    assert message.startswith("hpsv2: ") or "HPS_v2.1_compressed.pt" in message
    assert not loaded
