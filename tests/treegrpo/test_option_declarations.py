"""Configuration owned by what reads it: recipes and model kinds declare their options and presets where
they live, the registries refuse a different entry under a taken name, and errors have one type per kind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from treeadv.registry import RegistryError
from treegrpo.config import Config, ConfigError, preset_config
from treegrpo.errors import RunFileError, TreegrpoError
from treegrpo.recipes import RECIPES, USES, Recipe, recipe, register_recipe


def test_the_config_module_alone_knows_the_built_in_kinds_and_presets() -> None:
    """treegrpo.config does not import treegrpo.problems; the kinds registry imports it by name on first use."""
    code = ("from treegrpo.config import Config, preset_config\n"
            "assert Config().model.kind == 'digits'\n"
            "print(preset_config('sd3').model.image_size, Config().override(['model.kind=toy2d']).model.kind)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["512", "toy2d"]


def test_each_kind_registers_its_preset_next_to_its_problem() -> None:
    from treegrpo.families import families, family
    from treegrpo.kinds import KINDS, OPTION_GROUPS
    from treegrpo.problems import digits, toy2d
    from treegrpo.uses import Use

    # the order options() and --help show: digits, one kind per registered family, toy2d
    assert list(KINDS) == ["digits", *(f.name for f in families()), "toy2d"]
    assert [f.name for f in families()][:5] == ["sd3", "flux", "sd15", "qwen_image", "wan"]
    assert KINDS["digits"].preset == digits.PRESET and KINDS["toy2d"].preset == toy2d.PRESET
    for entry in families():  # a family's kind is what its ModelFamily declares
        kind = KINDS[entry.name]
        assert kind.preset == entry.preset and kind.reads == tuple(OPTION_GROUPS[name] for name in entry.reads)
        assert kind.uses == tuple(Use(*use) for use in entry.uses)
    assert KINDS["flux"].preset == family("flux").preset == (
        "model.rewards=hpsv2", "model.image_size=512", "model.max_sequence_length=512",
        "sampling.prompts_per_iteration=32", "sampling.guidance_scale=3.5", "train.out_dir=runs/flux")
    assert preset_config("toy2d").optim.lr == 3e-3 and preset_config("digits").loss.kl_coef == 0.15


def test_a_registered_kind_declares_the_options_it_reads() -> None:
    from treegrpo.kinds import KINDS
    from treegrpo.problems import register_problem, toy2d_problem
    from treegrpo.problems.build import MODEL_OPTIONS
    from treegrpo.problems.text_to_image import PIPELINE_OPTIONS

    def build(config, **_):
        return toy2d_problem(config.sampling.num_steps)

    register_problem("reader", build, preset=("train.iterations=3",), reads=(PIPELINE_OPTIONS, MODEL_OPTIONS))
    try:
        assert preset_config("reader").train.iterations == 3
        assert Config().override(["model.kind=reader", "model.image_size=32"]).model.image_size == 32
        with pytest.raises(ConfigError, match=r"^model.image_size: 32 is not used with model.kind=digits; it applies "
                                              r"to model.kind=sd3, flux, sd15, qwen_image, wan, reader\. "):
            Config().override(["model.image_size=32"])
        register_problem("reader", build, preset=("train.iterations=3",), reads=(PIPELINE_OPTIONS, MODEL_OPTIONS))
        with pytest.raises(RegistryError, match="model kind 'reader' is already registered"):
            register_problem("reader", lambda config, **_: None)
    finally:
        KINDS.remove("reader")
    with pytest.raises(ConfigError, match=r"^model.image_size: 32 is not used with model.kind=digits; it applies to "
                                          r"model.kind=sd3, flux, sd15, qwen_image, wan\. "):
        Config().override(["model.image_size=32"])


def test_recipes_live_in_one_registry_with_the_options_they_read() -> None:
    assert recipe("treegrpo") is RECIPES["treegrpo"] and recipe("grpo").sampler == "trajectory"
    with pytest.raises(TreegrpoError, match=r"^loss.algorithm: expected one of branch_grpo, .*, got 'nope'$"):
        recipe("nope")
    assert any("sampling.window" in use.fields for use in USES)
    again = Recipe("grpo", "trajectory", "leaf", "ppo_clip", summary=RECIPES["grpo"].summary)
    assert register_recipe(again) is again and RECIPES["grpo"] == again  # the same recipe again: no error
    with pytest.raises(RegistryError, match="recipe 'grpo' is already registered"):
        register_recipe(Recipe("grpo", "tree", "tree", "ppo_clip"))


def test_the_resume_policy_lives_with_checkpoints() -> None:
    from treegrpo.algos.checkpoint import MAY_CHANGE_ON_RESUME, config_changes

    config = Config().override(["optim.lr=3e-5", "train.iterations=7"])
    assert "train.iterations" in MAY_CHANGE_ON_RESUME and "optim.lr" not in MAY_CHANGE_ON_RESUME
    assert config_changes(Config().to_dict(), config) == ["optim.lr 1e-05 -> 3e-05"]
    assert config_changes({"loss": {"temperature": "1.0"}}, Config()) == []  # a number stored as text


def test_an_unreadable_run_file_is_a_run_file_error(tmp_path) -> None:
    from treegrpo.algos.run_summary import read_json

    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(RunFileError, match=r"^train.out_dir: .*list.json does not hold a JSON object$"):
        read_json(tmp_path / "list.json")
    with pytest.raises(RunFileError, match=r"^train.out_dir: cannot read .*missing.json \(FileNotFoundError\)$"):
        read_json(tmp_path / "missing.json")
    assert not issubclass(RunFileError, ConfigError)


def _string_constants(path) -> list[str]:
    """Every string literal in ``path``'s code, docstrings left out (they cite peers' scripts by name)."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_family_is_named_in_the_config_the_rewards_or_the_algorithms() -> None:
    """The configuration module, rewards/ and algos/ consult treegrpo.families; none names a family in a string."""
    import re
    from pathlib import Path

    from treegrpo.families import families

    repo = Path(__file__).resolve().parents[2]
    files = [repo / "treegrpo" / "config.py", *sorted((repo / "rewards").glob("*.py")),
             *sorted((repo / "algos").glob("*.py"))]
    names = [family.name for family in families()]
    assert {"sd3", "flux", "sd15", "qwen_image", "wan"} <= set(names) and len(files) > 20
    found = [(path.name, text) for path in files for text in _string_constants(path)
             if any(re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text) for name in names)]
    assert not found, found


def test_num_frames_is_read_by_video_families_only() -> None:
    from treegrpo.families import families

    video = [f.name for f in families() if f.modality == "video"]
    assert "wan" in video and "qwen_image" not in video
    assert preset_config("wan").model.num_frames == 81 and Config().model.num_frames == 1
    assert Config().override(["model.kind=wan", "model.num_frames=5"]).model.num_frames == 5
    for kind in ("sd3", "qwen_image", "digits"):
        with pytest.raises(ConfigError, match=rf"^model.num_frames: 5 is not used with model.kind={kind}; it applies "
                                              r"to model.kind=wan \(video families\)\. "):
            Config().override([f"model.kind={kind}", "model.num_frames=5"])
    with pytest.raises(ConfigError, match=r"^model.num_frames: expected an int >= 1"):
        Config().override(["model.kind=wan", "model.num_frames=0"])


def test_image_rewards_score_image_families_and_video_rewards_video_families() -> None:
    from treegrpo.families import families
    from treegrpo.rewards import rewards_for

    for family in families():
        names = rewards_for(family.name)
        if family.modality == "video":
            assert {"hpsv2_frames", "clipscore_frames", "temporal_consistency"} <= set(names) and "hpsv2" not in names
        else:
            assert "hpsv2" in names and not any(name.endswith("_frames") for name in names)
    assert "hpsv2" not in rewards_for("digits") and "jpeg_compressibility" in rewards_for("digits")
