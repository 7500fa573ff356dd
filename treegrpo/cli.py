"""The ``treegrpo`` console command: ``train``, ``eval``, ``bench`` and ``pretrain``.

Every subcommand takes ``--config PATH`` (TOML or YAML), one flag per configuration field generated from
the dataclasses in :mod:`treegrpo.config` (``--sampling.num_steps 20``, ``--train.resume`` /
``--no-train.resume``, lists comma-separated) and repeatable ``--set section.field=value``.
Precedence: the model kind's preset (:func:`treegrpo.config.preset_config`) < config file < ``--set`` <
per-field flags. ``--print-config`` prints the resolved configuration as TOML and exits.

    treegrpo train --config run.toml --loss.algorithm grpo --train.iterations 50
    treegrpo train --plugin examples/swap_loss.py --loss.algorithm clip_higher   # a loss registered by a plugin
    treegrpo eval --config run.toml --checkpoint runs/treegrpo/ckpt-100
    treegrpo bench --quick                      # benchmarks/compare_methods.py --quick
    treegrpo bench --gpu -- --compile           # benchmarks/gpu_iteration.py --compile
    treegrpo bench --name backup_speed -- --sizes 1000 --repeats 3
    treegrpo pretrain -- --what all --out embedded/weights --seed 0   # re-make the embedded weights
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import runpy
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from treegrpo.config import Config, ModelConfig, Option, options, preset_config, read_config_file
from treegrpo.errors import ConfigError, TreegrpoError, TreegrpoWarning
from treegrpo.kinds import model_kinds
from treegrpo.recipes import RECIPES
from treegrpo.rewards.serve import add_serve_reward_parser, serve_reward_command

__all__ = ["build_parser", "main", "resolve_config"]

PROG = "treegrpo"


def _default_text(option: Option) -> str:
    """How a default reads in help: lists comma-separated, empty values as ''."""
    value = option.default
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    if isinstance(value, bool):
        value = str(value).lower()
    return str(value) if value != "" else "''"


def _metavar(option: Option) -> str:
    """A short placeholder for the option's value, the choices where there are some."""
    if option.choices:
        return "{" + ",".join(option.choices) + "}"
    return {"int": "N", "float": "X", "str": "STR", "list[float]": "X,X", "list[int]": "N,N", "list[str]": "STR,STR"}[option.kind]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set``, ``--print-config`` and one flag per config field.

    Every default is SUPPRESS, so the namespace holds only what was given (precedence stays with
    the resolver), and values stay strings so bad ones fail as one-line ConfigErrors, not argparse errors.
    """
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="TOML or YAML file of section tables (fields as below)")
    parser.add_argument(
        "--plugin", metavar="FILE_OR_MODULE", action="append", default=argparse.SUPPRESS,
        help="a .py file or module to import first (repeatable): what it registers (register_loss, "
             "register_estimator, register_reward, register_problem) becomes selectable by name",
    )
    parser.add_argument(
        "--set", metavar="SECTION.FIELD=VALUE", action="append", default=argparse.SUPPRESS, dest="set",
        help="override any field (repeatable); per-field flags win over --set",
    )
    parser.add_argument(
        "--print-config", action="store_true", default=argparse.SUPPRESS,
        help="print the resolved configuration as TOML and exit",
    )
    for section in dict.fromkeys(option.section for option in options()):
        group = parser.add_argument_group(f"[{section}] options")
        for option in (option for option in options() if option.section == section):
            _add_field(group, option)


class _Switch(argparse.BooleanOptionalAction):
    """``--x`` and ``--no-x``, and also ``--x true`` / ``--x false`` (the value stays text: the config
    parses it, so a bad one is the config's one-line error)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in self.option_strings and values is not None:
            if option_string.startswith("--no-"):
                parser.error(f"{option_string} takes no value (use {option_string.replace('--no-', '--', 1)} {values})")
            setattr(namespace, self.dest, values)
            return
        super().__call__(parser, namespace, None, option_string)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of the command is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _add_field(group: Any, option: Option) -> None:
    """One flag for one field; bools get ``--no-`` forms."""
    flag, dest = f"--{option.section}.{option.name}", f"{option.section}.{option.name}"
    text = f"{option.help} (default: {_default_text(option)})".replace("%", "%%")
    if option.kind == "bool":
        group.add_argument(flag, dest=dest, action=_Switch, default=argparse.SUPPRESS, help=text)
    else:
        group.add_argument(flag, dest=dest, metavar=_metavar(option), default=argparse.SUPPRESS, help=text)


def build_parser() -> argparse.ArgumentParser:
    """The ``treegrpo`` parser; the config options are on it and on every subcommand."""
    parser = _Parser(prog=PROG, description="RL post-training of diffusion/flow models (TreeGRPO).")
    _add_config_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,bench,pretrain,serve-reward}",
                                     parser_class=_Parser)
    train = commands.add_parser("train", help="train with the resolved config")
    _add_config_options(train)
    evaluate = commands.add_parser(
        "eval", help="score held-out samples of the base weights, model.lora and a checkpoint; print the table"
    )
    _add_config_options(evaluate)
    evaluate.add_argument(
        "--checkpoint", metavar="PATH", default=None, help="checkpoint to evaluate (default: latest in train.out_dir)"
    )
    bench = commands.add_parser("bench", help="run benchmarks/<name>.py; arguments after -- go to the script")
    _add_config_options(bench)
    bench.add_argument("--name", default="compare_methods",
                       help="benchmark module in treegrpo.benchmarks (benchmarks/ in a checkout; default: compare_methods)")
    bench.add_argument("--quick", action="store_true", help="pass --quick to the script (a short smoke run)")
    bench.add_argument("--gpu", action="store_true",
                       help="run benchmarks/gpu_iteration.py (iteration times on an SD3.5-Medium-shaped transformer)")
    bench.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the benchmark script, after --")
    pretrain = commands.add_parser(
        "pretrain", help="re-make the embedded digits weights; arguments after -- go to treegrpo.embedded.pretrain")
    pretrain.add_argument("script_args", nargs=argparse.REMAINDER,
                          help="arguments for python -m treegrpo.embedded.pretrain (see its --help), after --")
    add_serve_reward_parser(commands)
    return parser


def _after_dashes(values: list[str]) -> list[str]:
    return values[1:] if values[:1] == ["--"] else values


def _last_setting(assignments: list[str], data: dict, section: str, name: str) -> str | None:
    """The value a flag (the last one) or else the config file gives ``section.name``, as text."""
    flags = [a.partition("=")[2].strip() for a in assignments if a.partition("=")[0].strip() == f"{section}.{name}"]
    table = data.get(section, {})
    value = flags[-1] if flags else (table.get(name) if isinstance(table, dict) else None)
    return str(value) if value is not None else None


def resolve_config(args: argparse.Namespace) -> Config:
    """The model kind's preset, the algorithm's recipe, then the config file, then ``--set``, then
    per-field flags; validated."""
    given = vars(args)
    data = read_config_file(given["config"]) if "config" in given else {}
    assignments = list(given.get("set", []))
    for option in options():
        key = f"{option.section}.{option.name}"
        if key in given:
            value = given[key]
            text = str(value).lower() if isinstance(value, bool) else value
            assignments.append(f"{key}={text}")
    kind = _last_setting(assignments, data, "model", "kind") or ModelConfig().kind
    algorithm = _last_setting(assignments, data, "loss", "algorithm")
    # the preset, then the algorithm's recipe, under the file and the flags
    base = preset_config(kind, algorithm if algorithm in RECIPES else None) if kind in model_kinds() else None
    config = Config.from_dict(data, base, check_used=False)
    config = config.override(assignments, check_used=False) if assignments else config
    # A flag names an option on purpose, even at its default; a file may spell out defaults it does not rely on.
    config.check_used({a.partition("=")[0].strip() for a in assignments})
    if config.loss.options:  # typed by the loss's constructor: checked against the class, before any model loads
        from treegrpo.algos.loss_options import parse_loss_options
        from treegrpo.algos.losses import loss_class

        parse_loss_options(loss_class(config.loss.algorithm), config.loss.options)
    return config


def _serve_reward(config: Config, args: argparse.Namespace) -> int:
    """``treegrpo serve-reward``, with every built-in reward registered (the digits rewards register
    when :mod:`treegrpo.embedded` is imported)."""
    import treegrpo.embedded  # noqa: F401

    return serve_reward_command(config, args)


def load_plugins(argv: list[str]) -> list[str]:
    """Import every ``--plugin`` of ``argv`` (a ``.py`` file, run as a module, or a module name),
    before the parser is built, so the names they register are valid choices; returns them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    plugins = pre.parse_known_args(argv)[0].plugin
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise TreegrpoError(f"--plugin: no such file {plugin}")
            runpy.run_path(str(path), run_name=f"treegrpo_plugin_{path.stem}")
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as error:
                raise TreegrpoError(f"--plugin: cannot import {plugin!r} ({error})") from None
    return plugins


def _train(config: Config, args: argparse.Namespace) -> int:
    """Run training with ``config`` (the trainer is imported here: the CLI's other commands do without it)."""
    from treegrpo.algos.entrypoints import run

    run(config)
    return 0


RUN_LOCAL = frozenset({"train.out_dir", "train.resume", "train.overwrite", "train.allow_config_change", "eval.out"})
"""Options of a checkpoint's saved configuration that ``treegrpo eval`` does not take over: where the
run is (the folder eval was pointed at) and how a training run starts or writes."""


def _with_run_config(args: argparse.Namespace, saved: dict, out_dir: str, source: Path) -> Config:
    """The configuration ``treegrpo eval`` uses for a checkpoint that records its run's (``saved``):
    the model kind's preset < the algorithm's recipe < the run's configuration < ``--config`` <
    ``--set`` < per-field flags, as :func:`resolve_config` layers them with the run's configuration
    under the file (less :data:`RUN_LOCAL`; ``train.out_dir`` stays ``out_dir``)."""
    given = vars(args)
    known = {f"{option.section}.{option.name}" for option in options()}
    data: dict[str, dict[str, Any]] = {
        section: {name: value for name, value in values.items()
                  if f"{section}.{name}" in known and f"{section}.{name}" not in RUN_LOCAL}
        for section, values in saved.items() if any(key.startswith(f"{section}.") for key in known)}
    file = read_config_file(given["config"]) if "config" in given else {}
    for section, values in file.items():  # the file (resolve_config has read and checked it) over the run
        data[section] = {**data.get(section, {}), **values}
    data.setdefault("train", {})["out_dir"] = out_dir
    assignments = list(given.get("set", []))
    for option in options():
        key = f"{option.section}.{option.name}"
        if key in given:
            value = given[key]
            assignments.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    kind = _last_setting(assignments, data, "model", "kind") or ModelConfig().kind
    algorithm = _last_setting(assignments, data, "loss", "algorithm")
    try:
        base = preset_config(kind, algorithm if algorithm in RECIPES else None) if kind in model_kinds() else None
        config = Config.from_dict(data, base, check_used=False)
        config = config.override(assignments, check_used=False) if assignments else config
        config.check_used({a.partition("=")[0].strip() for a in assignments})
    except ConfigError as error:
        raise ConfigError(f"{error} (with the run configuration read from {source}; flags override it)") from None
    return config


def _eval(config: Config, args: argparse.Namespace) -> int:
    """Score held-out samples of the base weights, ``model.lora`` and ``--checkpoint`` (default: the
    latest in ``train.out_dir``); prints the paper's table and writes ``eval.out``. The checkpoint's
    saved configuration (its ``state.json``) is the base that ``--config`` and flags override
    (:func:`_with_run_config`): a run is evaluated as the model it trained."""
    from treegrpo.algos.checkpoint import STATE_JSON, checkpoint_config, latest_checkpoint
    from treegrpo.algos.entrypoints import run_eval

    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(config.train.out_dir)
    if checkpoint is not None and checkpoint.is_dir():  # a missing one is run_eval's one-line error
        saved = checkpoint_config(checkpoint)
        if saved:
            config = _with_run_config(args, saved, config.train.out_dir, checkpoint / STATE_JSON)
            run = {key: saved.get(section, {}).get(name, "?") for key, (section, name) in
                   (("model.kind", ("model", "kind")), ("loss.algorithm", ("loss", "algorithm")))}
            print(f"run configuration: {checkpoint / STATE_JSON} (model.kind={run['model.kind']}, loss.algorithm="
                  f"{run['loss.algorithm']}); --config and flags override it", flush=True)
    run_eval(config, args.checkpoint)
    return 0


BENCH_FLAGS = {"train.iterations": "--iterations", "train.seed": "--seeds", "model.kind": "--kind"}
"""Config options ``treegrpo bench`` hands to ``compare_methods`` as the script's own flags; any other
given option goes to it as ``--set section.field=value`` (applied to every run, over the recipes)."""


def _bench_arguments(name: str, args: argparse.Namespace) -> list[str]:
    """The script's arguments: ``--quick``, the config options given on the command line as
    ``compare_methods`` reads them, then the arguments after ``--``. Raises a one-line error for an
    option the benchmark would not read."""
    given = vars(args)
    if "config" in given:
        raise TreegrpoError("--config: treegrpo bench reads no config file (every method starts from the model "
                            "kind's preset and its recipe); give single settings as --set section.field=value")
    flags = [key for key in (f"{o.section}.{o.name}" for o in options()) if key in given]
    assignments = [*given.get("set", []), *(f"{key}={given[key]}" for key in flags)]
    if assignments and name != "compare_methods":
        first = assignments[0].partition("=")[0]
        raise TreegrpoError(f"--{first}: treegrpo bench --name {name} takes no config options; give the "
                            f"script's own after -- (python benchmarks/{name}.py --help lists them)")
    forwarded = ["--quick"] if args.quick else []
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        key = key.strip()
        if key == "loss.algorithm":
            raise TreegrpoError("--loss.algorithm: treegrpo bench runs every method's recipe; choose methods "
                                "after --, e.g. treegrpo bench -- --methods treegrpo flow_grpo")
        if key in BENCH_FLAGS:
            forwarded += [BENCH_FLAGS[key], value.strip()]
        else:
            forwarded += ["--set", f"{key}={value.strip()}"]
    return [*forwarded, *_after_dashes(list(args.script_args))]


def _bench(config: Config, args: argparse.Namespace) -> int:
    """Run the benchmark module ``treegrpo.benchmarks.<name>`` as ``__main__``: ``--quick`` and the
    config options given (``compare_methods`` only) forwarded, then the arguments after ``--``."""
    from treegrpo.benchmarks import SCRIPTS

    name = "gpu_iteration" if args.gpu else args.name
    if name not in SCRIPTS:
        print(f"{PROG}: error: --name: no benchmark {name!r}; expected one of {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    script_args = _bench_arguments(name, args)
    saved = sys.argv
    sys.argv = [f"treegrpo bench --name {name}", *script_args]
    try:
        runpy.run_module(f"treegrpo.benchmarks.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _pretrain(config: Config, args: argparse.Namespace) -> int:
    """Run :func:`treegrpo.embedded.pretrain.main` with the arguments after ``--``."""
    from treegrpo.embedded import pretrain

    return pretrain.main(_after_dashes(list(args.script_args)))


HANDLERS = {"train": _train, "eval": _eval, "bench": _bench, "pretrain": _pretrain,
            "serve-reward": _serve_reward}


def _one_line_warnings() -> None:
    """Print the toolkit's own warnings as ``treegrpo: warning: <message>``, others as Python does."""
    python_format = warnings.formatwarning
    if getattr(python_format, "one_line", False):
        return

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, TreegrpoWarning):
            return f"{PROG}: warning: {' '.join(str(message).split())}\n"
        return python_format(message, category, filename, lineno, line)

    format_warning.one_line = True
    warnings.formatwarning = format_warning


MAX_ERROR_CHARS = 2000


def _shortened(message: str) -> str:
    """An error line of readable length: a huge value echoed in it (a 20 MB path) is cut."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return f"{message[:MAX_ERROR_CHARS]}... ({len(message) - MAX_ERROR_CHARS} more characters cut)"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), resolve the config and run the subcommand."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _one_line_warnings()
    try:
        load_plugins(argv)  # first: what a plugin registers is a valid choice of the parser
        args = build_parser().parse_args(argv)
        config = resolve_config(args)
        if getattr(args, "print_config", False):
            print(config.to_toml(), end="")
            return 0
        return HANDLERS[args.command](config, args)
    except (TreegrpoError, FileNotFoundError) as error:  # bad options, files, folders, checkpoints, NaNs
        print(f"{PROG}: error: {_shortened(' '.join(str(error).split()))}", file=sys.stderr)
        return 2
    except OSError as error:  # the disk: full, read-only, permissions
        if error.errno is None:
            raise
        where = f" ({error.filename})" if error.filename else ""
        if error.errno == errno.ENOSPC and error.filename:  # the folder and what is left on its disk
            folder = Path(error.filename).parent
            free = shutil.disk_usage(folder).free if folder.is_dir() else 0
            where = f" writing {error.filename}: {folder} has {free} bytes free; free some space there"
        print(f"{PROG}: error: {_shortened(os.strerror(error.errno) + where)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
