"""The typed config and the ``treegrpo`` CLI: defaults, round trips, overrides, precedence and errors."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from treegrpo import cli
from treegrpo.config import (
    SECTIONS,
    Config,
    ConfigError,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SamplingConfig,
    TrainConfig,
    options,
)

NON_DEFAULT = {  # every section off its defaults, and still a consistent run (no option it would ignore)
    "model": {"kind": "sd3", "path": "weights/x", "rewards": ["a", "b"], "image_size": 8},
    "sampling": {"num_steps": 20, "branching": 2, "depth": 4, "window": "fixed", "window_start": 16,
                 "noise_level": 0.3, "transition": "cps", "cps_scoring": "density"},
    "loss": {"clip_range": 2e-4, "reward_weights": [0.8], "temperature": 0.5, "kl_coef": 0.04},
    "optim": {"lr": 3e-5, "beta2": 0.99, "grad_accumulation": 4, "warmup_iterations": 5},
    "train": {"iterations": 7, "precision": "bf16", "resume": True, "check_on_policy": "off", "out_dir": "r/x"},
    "eval": {"rewards": ["hpsv2", "clipscore"], "samples_per_prompt": 2, "num_steps": 40, "seed": 5, "base": False},
}


def _print_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Config:
    """Run ``main(argv + --print-config)`` and parse what it printed back into a Config."""
    assert cli.main([*argv, "--print-config"]) == 0
    return Config.from_dict(tomllib.loads(capsys.readouterr().out))


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults_are_the_paper_numbers() -> None:
    """TreeGRPO's T=10, k=3, d=3, AdamW lr 1e-5 and weight decay 0.01, no KL."""
    config = Config()
    assert config.validate() is config
    assert (config.sampling.num_steps, config.sampling.branching, config.sampling.depth) == (10, 3, 3)
    assert config.optim.lr == 1e-5
    assert config.optim.weight_decay == 0.01
    assert config.loss.kl_coef == 0.0
    assert config.loss.algorithm == "treegrpo"


def test_every_field_has_a_default_and_a_one_line_help() -> None:
    """The CLI needs both; list defaults must not be shared between instances."""
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            assert f.metadata["help"].strip() and "\n" not in f.metadata["help"]
    first, second = Config(), Config()
    first.model.rewards.append("x")
    assert second.model.rewards == ["classifier"]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("section", list(SECTIONS))
def test_each_section_round_trips_through_dict_and_toml(section: str, tmp_path) -> None:
    """to_dict/from_dict and to_toml/from_toml are inverses, section by section."""
    config = Config.from_dict({section: NON_DEFAULT[section]})
    assert getattr(config, section) != getattr(Config(), section)
    assert Config.from_dict(config.to_dict()) == config
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    assert Config.from_toml(path) == config


def test_whole_config_round_trips_and_to_dict_is_plain(tmp_path) -> None:
    settings = {**NON_DEFAULT, "loss": {**NON_DEFAULT["loss"], "reward_weights": [0.8, 0.2]}}
    config = Config.from_dict(settings)
    data = config.to_dict()
    assert set(data) == set(SECTIONS)
    assert all(type(values) is dict for values in data.values())
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    assert Config.from_toml(path) == config


def test_yaml_file_gives_the_same_config_as_toml(tmp_path) -> None:
    import yaml

    settings = {**NON_DEFAULT, "loss": {**NON_DEFAULT["loss"], "reward_weights": [0.8, 0.2]}}
    config = Config.from_dict(settings)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert Config.from_yaml(path) == config == Config.from_file(path)
    broken = tmp_path / "broken.yml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^.*broken.yml: cannot read config: "):
        Config.from_file(broken)
    with pytest.raises(ConfigError, match=r"run.json: expected a .toml, .yaml or .yml"):
        Config.from_file(tmp_path / "run.json")


def test_from_dict_takes_toml_ints_for_floats() -> None:
    assert Config.from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


def test_missing_toml_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        Config.from_toml(missing)


# ---------------------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("assignment", "section", "name", "expected"),
    [
        ("train.iterations=5", "train", "iterations", 5),
        ("loss.clip_range=2e-4", "loss", "clip_range", 2e-4),
        ("optim.lr=0.5", "optim", "lr", 0.5),
        ("train.resume=true", "train", "resume", True),
        ("train.resume=YES", "train", "resume", True),
        ("train.resume=1", "train", "resume", True),
        ("train.check_on_policy=strict", "train", "check_on_policy", "strict"),
        ("train.check_on_policy=no", "train", "check_on_policy", "off"),  # the former bool still reads
        ("train.check_on_policy=true", "train", "check_on_policy", "strict"),
        ("train.rescore_on_policy=1", "train", "rescore_on_policy", True),
        ("train.compile=False", "train", "compile", False),
        ("sampling.transition=dance_sde", "sampling", "transition", "dance_sde"),
        ("model.path=", "model", "path", ""),
        ("loss.reward_weights=1", "loss", "reward_weights", [1.0]),
        ("loss.reward_weights=", "loss", "reward_weights", []),
        ("model.rewards=classifier, aesthetic_proxy", "model", "rewards", ["classifier", "aesthetic_proxy"]),
    ],
)
def test_override_parses_each_type(assignment: str, section: str, name: str, expected: object) -> None:
    base = Config()
    if name == "rewards":
        base = base.override(["loss.reward_weights="])
    updated = base.override([assignment])
    value = getattr(getattr(updated, section), name)
    assert value == expected and type(value) is type(expected)


def test_override_returns_a_new_config_and_keeps_the_old() -> None:
    base = Config()
    updated = base.override(["model.rewards=a,b", "loss.reward_weights=0.5,0.5", "train.iterations=3"])
    assert updated.model.rewards == ["a", "b"] and updated.loss.reward_weights == [0.5, 0.5]
    assert base == Config()
    updated.model.rewards.append("c")
    assert base.model.rewards == ["classifier"]


# ---------------------------------------------------------------------------------------------- errors


def _from_dict(data: dict) -> None:
    Config.from_dict(data)


def _override(*assignments: str) -> None:
    Config().override(list(assignments))


@pytest.mark.parametrize(
    ("build", "prefix", "fragment"),
    [
        (lambda: _override("sampling.alpha=0"), "sampling.alpha: ", "(0, 1]"),
        (lambda: _override("sampling.alpha=1.5"), "sampling.alpha: ", "got 1.5"),
        (lambda: _override("sampling.depth=11"), "sampling.depth: ", "num_steps"),
        (lambda: _from_dict({"sampling": {"window_start": 8}}), "sampling.window_start: ", "8 + 3"),
        (lambda: _override("loss.algorithm=ppo"), "loss.algorithm: ", "got 'ppo'"),
        (lambda: _override("train.iterations=abc"), "train.iterations: ", "expected an int >= 1, got 'abc'"),
        (lambda: _override("train.iterations=0"), "train.iterations: ", "got 0"),
        (lambda: _from_dict({"train": {"iterations": True}}), "train.iterations: ", "got True"),
        (lambda: _from_dict({"sampling": {"static_shapes": True}}), "sampling.static_shapes: ", "max_batch > 0"),
        (lambda: _from_dict({"sampling": {"depth": 2.0}}), "sampling.depth: ", "an int"),
        (lambda: _override("train.precision=fp16"), "train.precision: ", "bf16, fp32"),
        (lambda: _override("train.resume=maybe"), "train.resume: ", "got 'maybe'"),
        (lambda: _override("loss.clip_rnge=1"), "loss.clip_rnge: ", "did you mean clip_range?"),
        (lambda: _from_dict({"loss": {"clip_rnge": 1}}), "loss.clip_rnge: ", "did you mean clip_range?"),
        (lambda: _from_dict({"los": {}}), "los: ", "did you mean loss?"),
        (lambda: _override("optim.lr=0"), "optim.lr: ", "(0, 1]"),
        (lambda: _override("optim.lr=1e39"), "optim.lr: ", "(0, 1]"),
        (lambda: _override("optim.beta2=1"), "optim.beta2: ", "[0, 1)"),
        (lambda: _override("loss.reward_weights=-1"), "loss.reward_weights: ", ">= 0"),
        (lambda: _override("loss.reward_weights=0.5,0.5"), "loss.reward_weights: ", "one weight per reward"),
        (lambda: _override("model.kind=sdxl"), "model.kind: ", "got 'sdxl'"),
        (lambda: _override("train.ema_decay=1"), "train.ema_decay: ", "got 1.0"),
        (lambda: _override("loss.advantage_std=global"), "loss.advantage_std: ", "batch, group, group_bessel"),
        (lambda: _override("loss.timestep_selection=last"), "loss.timestep_selection: ", "first, per_sample, random"),
        (lambda: _override("loss.timestep_selection=per_sample"), "loss.timestep_selection: ", "use random or first"),
        (lambda: _override("loss.advantage_eps=-1"), "loss.advantage_eps: ", "a number >= 0 or auto"),
        (lambda: _override("loss.advantage_eps=tiny"), "loss.advantage_eps: ", "got 'tiny'"),
    ],
)
def test_bad_inputs_raise_one_line_naming_the_field(build, prefix: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(prefix), message
    assert fragment in message, message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------- CLI


def test_precedence_defaults_then_toml_then_flags(tmp_path, capsys) -> None:
    """A TOML value beats the preset; a flag beats the TOML value; --set loses to a per-field flag."""
    from treegrpo.config import preset_config

    path = tmp_path / "run.toml"
    path.write_text('[train]\niterations = 7\nseed = 3\n\n[loss]\nalgorithm = "grpo"\n')
    assert _print_config(["train"], capsys) == preset_config(Config().model.kind)
    from_file = _print_config(["train", "--config", str(path)], capsys)
    assert (from_file.train.iterations, from_file.train.seed, from_file.loss.algorithm) == (7, 3, "grpo")
    flags = _print_config(
        ["train", "--config", str(path), "--train.iterations", "9", "--set", "train.seed=5",
         "--set", "loss.algorithm=ddpo", "--loss.algorithm", "mixgrpo", "--train.resume"],
        capsys,
    )
    assert (flags.train.iterations, flags.train.seed, flags.loss.algorithm) == (9, 5, "mixgrpo")
    assert flags.train.resume is True


def test_cli_flags_of_every_type(capsys) -> None:
    config = _print_config(
        ["eval", "--no-train.rescore_on_policy", "--train.check_on_policy", "off", "--model.rewards", "a,b", "--loss.reward_weights", "1,3",
         "--optim.lr", "2e-5", "--sampling.transition", "ddim", "--train.out_dir", "x y"],
        capsys,
    )
    assert config.train.check_on_policy == "off" and config.train.rescore_on_policy is False
    assert config.model.rewards == ["a", "b"] and config.loss.reward_weights == [1.0, 3.0]
    assert config.optim.lr == 2e-5 and config.sampling.transition == "ddim" and config.train.out_dir == "x y"


@pytest.mark.parametrize("argv", [["train", "--help"], ["--help"]])
def test_help_lists_every_field(argv: list[str], capsys) -> None:
    """A new field without a flag, or without its help text, fails here."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in text
    for option in options():
        assert option.help.split()[0] in text


def test_unknown_reward_names_are_one_line_errors_naming_the_kind() -> None:
    import treegrpo.embedded  # noqa: F401  (registers the digits rewards)
    from treegrpo.rewards import UnknownRewardError, check_reward_names, rewards_for

    check_reward_names(["hpsv2", "jpeg_compressibility"], "model.rewards", kind="sd3")  # known names pass
    assert "classifier" in rewards_for("digits") and "classifier" not in rewards_for("sd3")
    with pytest.raises(UnknownRewardError, match=r"^eval.rewards: unknown reward 'x' for the digits model; expected"):
        check_reward_names(["classifier", "x"], "eval.rewards", kind="digits")
    with pytest.raises(UnknownRewardError, match="unknown reward 'classifier' for the sd3 model"):
        check_reward_names(["classifier"], "model.rewards", kind="sd3")


def test_options_cover_every_section() -> None:
    listed = {(option.section, option.name) for option in options()}
    classes = (ModelConfig, SamplingConfig, LossConfig, OptimConfig, TrainConfig, EvalConfig)
    expected = {(cls.section, f.name) for cls in classes for f in dataclasses.fields(cls)}
    assert listed == expected


def test_bench_with_a_missing_script_returns_2(capsys) -> None:
    assert cli.main(["bench", "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark 'nope'" in err and len(err.strip().splitlines()) == 1


def test_bad_flag_value_returns_2_with_the_message_on_stderr(capsys) -> None:
    assert cli.main(["train", "--loss.algorithm", "ppo"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "treegrpo: error: loss.algorithm: expected one of branch_grpo, dance_grpo, ddpo, flow_grpo, grpo, mix_grpo, mixgrpo, reinforce, treegrpo, got 'ppo'"
    ]
    assert captured.out == ""


def test_missing_config_file_returns_2(tmp_path, capsys) -> None:
    assert cli.main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_train_and_eval_call_the_trainer(monkeypatch) -> None:
    """The handlers hand the resolved config (and the checkpoint) to the lazily imported trainer."""
    calls = []

    from treegrpo.algos import entrypoints as run


    monkeypatch.setattr(run, "run", lambda config: calls.append(("run", config.train.iterations)))
    monkeypatch.setattr(run, "run_eval", lambda config, checkpoint: calls.append(("evaluate", checkpoint)))
    assert cli.main(["train", "--train.iterations", "2"]) == 0
    assert cli.main(["eval"]) == 0
    assert cli.main(["eval", "--checkpoint", "ckpt"]) == 0
    assert calls == [("run", 2), ("evaluate", None), ("evaluate", "ckpt")]


def test_bench_runs_the_installed_module_as_main_with_its_arguments(tmp_path, monkeypatch, capsys) -> None:
    import treegrpo.benchmarks

    (tmp_path / "echo.py").write_text("import sys\nprint('ARGS', sys.argv[1:], __name__)\n")
    monkeypatch.setattr(treegrpo.benchmarks, "SCRIPTS", ("echo",))
    monkeypatch.setattr(treegrpo.benchmarks, "__path__", [str(tmp_path)])  # the package's modules, found by name
    assert cli.main(["bench", "--name", "echo", "--", "--sizes", "10"]) == 0
    assert "ARGS ['--sizes', '10'] __main__" in capsys.readouterr().out
    assert cli.main(["bench", "--name", "nope"]) == 2
    assert "no benchmark 'nope'" in capsys.readouterr().err


def test_model_kind_presets_sit_under_files_and_flags(tmp_path, capsys) -> None:
    from treegrpo.config import preset_config

    toy = preset_config("toy2d")
    assert toy.optim.lr == 3e-3 and toy.sampling.num_steps == 8
    sd3 = preset_config("sd3")  # real models: the paper's numbers, at 512 px with 32 prompts and HPSv2.1
    assert (sd3.sampling.num_steps, sd3.sampling.branching, sd3.sampling.depth) == (10, 3, 3)
    assert (sd3.optim.lr, sd3.optim.weight_decay, sd3.sampling.prompts_per_iteration) == (1e-5, 0.01, 32)
    assert sd3.model.image_size == 512 and sd3.model.rewards == ["hpsv2"]
    assert preset_config("sd15").sampling.transition == "ddim"
    args = cli.build_parser().parse_args(["train", "--model.kind", "toy2d", "--optim.lr", "0.01"])
    resolved = cli.resolve_config(args)
    assert resolved.optim.lr == 0.01 and resolved.sampling.num_steps == 8 and resolved.loss.clip_range == 0.2
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  kind: toy2d\nsampling:\n  num_steps: 6\n")
    from_file = cli.resolve_config(cli.build_parser().parse_args(["train", "--config", str(path)]))
    assert from_file.sampling.num_steps == 6 and from_file.optim.lr == 3e-3


def test_train_without_arguments_is_treegrpo_on_the_digits_preset() -> None:
    config = cli.resolve_config(cli.build_parser().parse_args(["train"]))
    assert config.model.kind == "digits" and config.loss.algorithm == "treegrpo"
    assert (config.sampling.num_steps, config.sampling.branching, config.sampling.depth) == (10, 3, 3)  # the paper's tree
    assert config.model.rewards == ["classifier", "aesthetic_proxy"] and config.loss.reward_weights == [0.7, 0.3]
    assert config.train.out_dir == "runs/digits"


def test_pretrain_subcommand_forwards_its_arguments(monkeypatch) -> None:
    from treegrpo.embedded import pretrain

    seen = []
    monkeypatch.setattr(pretrain, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["pretrain", "--", "--what", "classifier", "--seed", "3"]) == 0
    assert seen == [["--what", "classifier", "--seed", "3"]]


# ---------------------------------------------------------------------------------------------
# Options the chosen algorithm or model kind would ignore are refused in one line.

REFUSED = [
    # (assignments, the refused option, the setting that rules it out, what would use it)
    (["sampling.group_size=27"], "sampling.group_size", "loss.algorithm=treegrpo", "grpo"),
    (["loss.algorithm=grpo", "sampling.branching=2"], "sampling.branching", "loss.algorithm=grpo", "treegrpo"),
    (["loss.algorithm=grpo", "sampling.trees_per_prompt=2"], "sampling.trees_per_prompt", "loss.algorithm=grpo",
     "treegrpo"),
    (["loss.algorithm=ddpo", "loss.estimator=mean"], "loss.estimator", "loss.algorithm=ddpo", "treegrpo"),
    (["loss.estimator=mean", "loss.temperature=2"], "loss.temperature", "loss.algorithm=treegrpo",
     "logprob_softmax"),
    (["loss.algorithm=grpo", "sampling.window=fixed"], "sampling.window", "loss.algorithm=grpo", "treegrpo"),
    (["sampling.window=fixed", "sampling.alpha=0.3"], "sampling.alpha", "sampling.window=fixed", "geometric"),
    (["sampling.window_start=2"], "sampling.window_start", "sampling.window=geometric", "fixed or shifting"),
    (["sampling.window_every=3"], "sampling.window_every", "sampling.window=geometric", "shifting"),
    (["loss.algorithm=grpo", "sampling.depth=2"], "sampling.depth", "loss.algorithm=grpo", "mixgrpo"),
    (["sampling.sde_steps=window"], "sampling.sde_steps", "loss.algorithm=treegrpo", "grpo"),
    (["loss.algorithm=reinforce", "loss.clip_range=0.2"], "loss.clip_range", "loss.algorithm=reinforce", "ddpo"),
    (["loss.tracker_buffer=8"], "loss.tracker_buffer", "loss.algorithm=treegrpo", "loss.algorithm=ddpo"),
    (["loss.algorithm=ddpo", "loss.reward_aggregation=reward"], "loss.reward_aggregation", "loss.algorithm=ddpo",
     "but ddpo"),
    (["loss.algorithm=ddpo", "loss.advantage_std=batch"], "loss.advantage_std", "loss.algorithm=ddpo", "but ddpo"),
    (["loss.algorithm=ddpo", "loss.advantage_eps=1e-4"], "loss.advantage_eps", "loss.algorithm=ddpo", "but ddpo"),
    (["model.image_size=64"], "model.image_size", "model.kind=digits", "sd3, flux, sd15"),
    (["model.prompts=p.txt"], "model.prompts", "model.kind=digits", "sd3, flux, sd15"),
    (["model.kind=sd15", "model.t5=false"], "model.t5", "model.kind=sd15", "model.kind=sd3"),
    (["model.kind=toy2d", "sampling.guidance_scale=3"], "sampling.guidance_scale", "model.kind=toy2d", "digits"),
    (["model.kind=toy2d", "model.rewards=aesthetic_proxy"], "model.rewards", "model.kind=toy2d", "digits"),
    (["model.kind=flux", "sampling.shift=1"], "sampling.shift", "model.kind=flux with sampling.schedule=scheduler",
     "sampling.schedule=dancegrpo"),
    (["model.kind=sd3", "sampling.true_cfg_scale=2"], "sampling.true_cfg_scale", "model.kind=sd3", "model.kind=flux"),
]


@pytest.mark.parametrize(("assignments", "option", "context", "who"), REFUSED,
                         ids=[case[1] + "-" + case[2] for case in REFUSED])
def test_an_option_the_run_ignores_is_refused_in_one_line(assignments, option, context, who) -> None:
    with pytest.raises(ConfigError) as error:
        Config().override(assignments)
    message = str(error.value)
    assert message.startswith(f"{option}: ") and "\n" not in message
    assert context in message and who in message


@pytest.mark.parametrize(("assignments", "option", "context", "who"), REFUSED[:3],
                         ids=[case[1] for case in REFUSED[:3]])
def test_the_cli_refuses_an_ignored_option_even_at_its_default(assignments, option, context, who, capsys) -> None:
    section_field, _, _value = assignments[-1].partition("=")
    default = next(o.default for o in options() if f"{o.section}.{o.name}" == section_field)
    flags = [f"--{a.partition('=')[0]}={a.partition('=')[2]}" for a in assignments[:-1]]
    text = str(default).lower() if isinstance(default, bool) else str(default)
    assert cli.main(["train", *flags, f"--{section_field}", text, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"treegrpo: error: {option}: ") and len(err.splitlines()) == 1


def test_options_every_algorithm_reads_are_accepted_and_order_does_not_matter(tmp_path) -> None:
    cases = [
        ["loss.algorithm=grpo", "sampling.group_size=27", "loss.kl_coef=0.04"],
        ["sampling.group_size=27", "loss.algorithm=ddpo", "loss.tracker_buffer=8"],
        ["loss.algorithm=mixgrpo", "sampling.depth=2", "sampling.window_start=1"],
        ["loss.algorithm=grpo", "sampling.sde_steps=window", "sampling.depth=2"],
        ["sampling.window=shifting", "sampling.window_start=2", "sampling.window_every=3"],
        ["loss.estimator=mean", "loss.kl_coef=0.1"],
        ["model.kind=sd3", "model.image_size=64", "model.t5=false"],
    ]
    for assignments in cases:
        Config().override(assignments)
    config_file = tmp_path / "run.toml"
    config_file.write_text('[sampling]\ngroup_size = 27\n')
    resolved = cli.resolve_config(cli.build_parser().parse_args(["train", "--config", str(config_file),
                                                                 "--loss.algorithm", "grpo"]))
    assert resolved.sampling.group_size == 27


def test_a_preset_value_is_no_set_option_wherever_the_config_is_validated() -> None:
    """The digits preset sets loss.clip_range; switching to reinforce (no clip) is not a user setting
    it, so the CLI, the problem builder and the trainer (which all validate) accept it."""
    from treegrpo.config import preset_config

    config = preset_config("digits").override(["loss.algorithm=reinforce"])
    assert config.loss.clip_range == 1e-2
    config.validate()  # what build_problem and Trainer run
    args = cli.build_parser().parse_args(["train", "--loss.algorithm", "reinforce"])
    assert cli.resolve_config(args).loss.algorithm == "reinforce"
    with pytest.raises(ConfigError, match=r"^loss.clip_range: 0.3 is not used with loss.algorithm=reinforce"):
        config.override(["loss.clip_range=0.3"])  # a value a user chose is still refused
    with pytest.raises(ConfigError, match=r"^loss.clip_range: 0.01 is not used"):
        cli.resolve_config(cli.build_parser().parse_args(["train", "--loss.algorithm", "reinforce",
                                                          "--loss.clip_range", "0.01"]))  # named on purpose


def test_estimator_options_reach_the_estimator_and_bad_ones_are_one_line() -> None:
    from treegrpo.algos import build_advantage

    config = Config().override(["loss.estimator_options=temperature=2"])
    assert config.loss.estimator_kwargs() == {"temperature": 2.0}
    assert build_advantage(config).estimator.temperature == 2.0
    with pytest.raises(ConfigError, match=r"^loss.temperature: expected a number > 0, got 'auto'$"):
        Config().override(["loss.temperature=auto"])  # removed: it weighted children by their noise norms alone
    assert Config().override(["loss.temperature=2"]).loss.estimator_kwargs() == {"temperature": 2.0}
    with pytest.raises(ConfigError, match=r"^loss.estimator_options: expected name=value, got 'temperature'$"):
        Config().override(["loss.estimator_options=temperature"])
    with pytest.raises(ConfigError, match=r"^loss.estimator_options: estimator 'logprob_softmax': unknown options \['width'\]"):
        Config().override(["loss.estimator_options=width=3"])
    with pytest.raises(ConfigError, match=r"^loss.estimator_options: temperature: expected a finite number > 0"):
        Config().override(["loss.estimator_options=temperature=-1"])
    with pytest.raises(ConfigError, match=r"^loss.estimator_options: .* is not used with loss.algorithm=grpo"):
        Config().override(["loss.algorithm=grpo", "loss.estimator_options=temperature=2"])


def test_clip_high_reaches_the_loss_and_is_refused_where_nothing_clips() -> None:
    from treegrpo.algos import build_loss
    from treegrpo.problems import build_problem

    config = Config().override(["model.kind=toy2d", "loss.clip_range=0.2", "loss.clip_high=0.28"])
    loss = build_loss(config, build_problem(config))
    assert (loss.clip_range, loss.clip_high) == (0.2, 0.28)
    assert build_loss(config.override(["loss.clip_high=0"]), build_problem(config)).clip_high == 0.2  # symmetric
    with pytest.raises(ConfigError, match=r"^loss.clip_high: 0.28 is not used with loss.algorithm=reinforce"):
        config.override(["loss.algorithm=reinforce"])


def test_a_registered_problem_kind_is_a_model_kind() -> None:
    from treegrpo.problems import KINDS, build_problem, register_problem, toy2d_problem

    register_problem("toy2d_copy", lambda config, **_: toy2d_problem(config.sampling.num_steps))
    try:
        config = Config().override(["model.kind=toy2d_copy", "sampling.num_steps=6"])
        assert build_problem(config).transition.num_steps == 6
    finally:
        KINDS.remove("toy2d_copy")
    with pytest.raises(ConfigError, match="^model.kind: expected one of"):
        Config().override(["model.kind=toy2d_copy"])


def test_the_trainer_refuses_a_problem_with_other_step_counts(tmp_path) -> None:
    from treegrpo.algos import Trainer
    from treegrpo.problems import toy2d_problem

    config = Config().override(["model.kind=toy2d", "sampling.num_steps=8", f"train.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^sampling.num_steps: 8, but the problem samples 10 steps"):
        Trainer(toy2d_problem(num_steps=10), config)
