"""Every code block, command line and dotted name of the documentation runs, parses or resolves.

Collected from ``README.md``, ``docs/**/*.md`` (``--8<--`` snippet includes expanded, as mkdocs does) and
the module docstrings of ``examples/*.py`` (their indented usage lines):

- ```` ```python ```` blocks run, each in a fresh namespace and its own temporary folder, all in one fresh
  interpreter (a ``def test_...`` a block defines is called), unless :data:`NOT_RUN` names the block with
  its reason; every block's imports resolve either way. :data:`SLOW` blocks run, each in its own
  interpreter, under ``pytest -m slow``.
- ```` ```bash ```` / ``console`` / ``sh`` blocks and the docstrings' usage lines: every ``treegrpo ...``
  command (also under ``python -m``, ``torchrun``, ``accelerate launch``) parses with the CLI's own
  parser, resolves its configuration (``--print-config``'s path, nothing runs) and the arguments it
  hands a benchmark or ``pretrain`` parse with that script's parser; every ``python examples/X.py`` /
  ``python benchmarks/X.py`` / ``python -m MODULE`` parses with the parser the script builds (captured
  without running the script); config files named exist (in the repository, or written by a docs
  ```` ```toml ```` block whose first line names it); ``pip install`` extras exist in ``pyproject.toml``.
- Every dotted ``treegrpo.*`` / ``treeadv.*`` name in backticks imports or resolves, and every
  ``section.field`` config option in backticks (``loss.clip_range``, ``--loss.algorithm grpo``,
  ``loss.algorithm=flow_grpo``) is a field of :mod:`treegrpo.config`.
- The problem builders are imported from one place, :mod:`treegrpo.problems`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import textwrap
import tomllib
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from treegrpo.config import SECTIONS, Config, options

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)"
                   r"^(?P=indent)(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"(?P<path>[^"]+)"[ \t]*$', re.MULTILINE)
SHELL = {"bash", "console", "sh", "shell"}

# Python blocks that are not run, each with its reason (keyed by file and a substring unique to the block).
# Their imports are still checked, and each key must still match exactly one block.
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/faq.md", "StableDiffusion3Pipeline.from_pretrained"): "needs the SD3.5-Medium weights",
    ("docs/pipelines.md", 'load_pipeline("/weights/sd3.5-medium"'): "needs the SD3.5-Medium weights and a GPU",
    ("docs/pipelines.md", 'load_pipeline("/weights/FLUX.1-dev"'): "needs the FLUX.1-dev weights and a GPU",
    ("docs/rewards.md", "scores = hps(images, prompts)"): "needs the HPSv2.1 weights and a GPU",
    ("docs/rewards.md", "for_evaluation(hps)(images, prompts)"): "needs the HPSv2.1 weights and a GPU",
    ("docs/envs.md", "envs.DenoisingEnv(problem.transition"):
        "a fragment: `problem`, `cond`, `s`, `P` and `rewards` come from the surrounding text",
    ("docs/tutorials/compose.md", '--8<-- "examples/compose_treegrpo.py"'):
        "the whole of examples/compose_treegrpo.py (25 training iterations by default): "
        "tests/examples/test_examples.py runs it with 16",
    ("docs/tutorials/swap_loss.md", '--8<-- "examples/swap_loss.py"'):
        "the whole of examples/swap_loss.py (five losses trained): tests/examples/test_examples.py runs it",
    ("docs/tutorials/estimator.md", '--8<-- "examples/new_estimator.py"'):
        "the whole of examples/new_estimator.py (property tests and training): tests/examples/test_examples.py runs it",
    ("docs/tutorials/sd35_lora.md", '--8<-- "examples/train_sd35_lora.py"'):
        "the whole of examples/train_sd35_lora.py (needs SD3.5 weights and a GPU): tests/examples/test_examples.py "
        "runs it on a tiny local pipeline",
}

# Python blocks that run, but for more than a few seconds: under `pytest -m slow`.
SLOW: dict[tuple[str, str], str] = {
    ("README.md", "Trainer(problem, config).fit(progress=False)"): "trains toy2d twice (6 iterations each)",
    ("README.md", "def test_soft_optimistic(case)"): "a property test over 100 hypothesis forests (~9 s)",
    ("docs/tutorials/estimator.md", "assert_catches(SoftmaxOfNegativeLogProb()"):
        "a hypothesis search for the violation, shrunk (~9 s)",
    ("docs/tutorials/swap_loss.md", "check_loss(lambda problem, kl: ReinforceLoss"):
        "the shared loss suite: two short toy2d trainings (~30 s)",
}

# Shell commands that are not checked: not the project's (venv, test runner, docs server, shell builtins).
OTHER_COMMANDS = {"printf", "mkdocs", "python -m venv", "python -m pytest"}

# `train.py`, `model.safetensors`: backticked file names, not `section.field` config options.
FILE_SUFFIXES = {"py", "json", "toml", "yaml", "yml", "md", "txt", "pt", "safetensors", "bin", "png", "csv"}

# Problem-builder imports not from treegrpo.problems that this file cannot fix (example code, not docs).
OTHER_PROBLEM_IMPORTS: dict[tuple[str, str], str] = {}

PROBLEM_BUILDERS = re.compile(r"^(?:build_problem|register_problem|\w+_problem|PROBLEMS)$")


@dataclass(frozen=True)
class Block:
    """One fenced block (or one example docstring's usage lines): where, its language and its text."""

    file: str  # repository-relative
    line: int
    lang: str
    raw: str  # as written
    text: str  # snippet includes expanded, dedented

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _expand(text: str) -> str:
    return SNIPPET.sub(lambda m: (REPO / m["path"]).read_text(), text)


def _blocks() -> list[Block]:
    blocks = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            body = textwrap.dedent(match["body"])
            blocks.append(Block(str(path.relative_to(REPO)), text[:match.start()].count("\n") + 1,
                                match["lang"].lower(), body, _expand(body)))
    for path in EXAMPLES:
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=True) or ""
        usage = "\n".join(line for line in doc.splitlines() if line.startswith("    "))
        if usage:
            blocks.append(Block(str(path.relative_to(REPO)), 1, "bash", usage, textwrap.dedent(usage)))
    return blocks


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py")]
TOML = [b for b in BLOCKS if b.lang == "toml"]


def _keyed(table: dict[tuple[str, str], str], block: Block) -> str | None:
    return next((why for (file, part), why in table.items() if file == block.file and part in block.raw), None)


# ------------------------------------------------------------------------------------------------
# Python blocks.


def test_every_exclusion_names_exactly_one_block():
    for table in (NOT_RUN, SLOW):
        for (file, part), why in table.items():
            matches = [b.where for b in PYTHON if b.file == file and part in b.raw]
            assert len(matches) == 1, f"{file} {part!r} ({why}) matches {matches or 'no block'}"


def _check_imports(code: str, where: str) -> None:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or the error shown


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in PYTHON])
def test_python_block_compiles_and_its_imports_resolve(block):
    compile(block.text, block.where, "exec")
    _check_imports(block.text, block.where)


def _block_code(block: Block) -> str:
    """The block, then a call of each ``def test_...`` it defines (a property test written for pytest)."""
    tests = [line[4:].split("(")[0] for line in block.text.splitlines() if line.startswith("def test_")]
    return block.text + "".join(f"\n{name}()" for name in tests) + "\n"


def _run_block(where: str, code: str, cwd: Path) -> str:
    """Exec ``code`` in a fresh namespace with ``cwd`` its working folder: '' when it runs, else the error."""
    cwd.mkdir(parents=True, exist_ok=True)
    saved = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, where, "exec"), {"__name__": "__main__"})  # noqa: S102 - the docs' own code
    except (Exception, SystemExit):  # noqa: BLE001 - every failure is reported, per block
        return traceback.format_exc(limit=-6)
    finally:
        os.chdir(saved)
    return ""


RUN = [b for b in PYTHON if not _keyed(NOT_RUN, b)]
RUN_FAST = [b for b in RUN if not _keyed(SLOW, b)]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in RUN_FAST])
def test_python_block_runs(block, docs_results):
    assert docs_results["blocks"][block.where] == "", f"{block.where} failed:\n{docs_results['blocks'][block.where]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in RUN if _keyed(SLOW, b)])
def test_slow_python_block_runs(block, tmp_path):
    result = subprocess.run([sys.executable, "-c", _block_code(block) + "print('docs block ok')\n"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{block.where} failed:\n{result.stderr[-4000:]}"
    assert result.stdout.rstrip().endswith("docs block ok")


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in TOML])
def test_toml_block_is_a_valid_config(block):
    Config.from_dict(tomllib.loads(block.text))


# ------------------------------------------------------------------------------------------------
# Shell blocks: each command parsed, nothing run.


def _commands(text: str) -> list[list[str]]:
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            if tokens[:cut]:
                commands.append(tokens[:cut])
            tokens = tokens[cut + 1:]
    return commands


@dataclass(frozen=True)
class Check:
    """One command to parse: ``kind`` is treegrpo, script (a .py path), shell (a .sh path), module, pip or python-c."""

    where: str
    line: str
    kind: str
    target: str
    args: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.where}: {self.line}"

    @property
    def id(self) -> str:
        return self.key[:150]


def _is_python(word: str) -> bool:
    return re.fullmatch(r"(?:.*/)?python(?:3(?:\.\d+)?)?", word) is not None


def _classify(where: str, tokens: list[str]) -> Check | None:
    line = shlex.join(tokens)
    name = Path(tokens[0]).name
    if name == "treegrpo":
        return Check(where, line, "treegrpo", "", tuple(tokens[1:]))
    if name in ("torchrun", "accelerate") or _is_python(tokens[0]):
        for i, token in enumerate(tokens[1:], 1):
            if token == "-m" and i + 1 < len(tokens):
                module, rest = tokens[i + 1], tuple(tokens[i + 2:])
                if module == "treegrpo":
                    return Check(where, line, "treegrpo", "", rest)
                if f"python -m {module}" in OTHER_COMMANDS:
                    return None
                return Check(where, line, "module", module, rest)
            if token == "-c" and _is_python(tokens[0]):
                return Check(where, line, "python-c", tokens[i + 1], ())
            if token.endswith(".py"):
                return Check(where, line, "script", token, tuple(tokens[i + 1:]))
    if name == "pip" and tokens[1:2] == ["install"]:
        return Check(where, line, "pip", "", tuple(tokens[2:]))
    if name in ("bash", "sh") and tokens[1:2] and tokens[1].endswith(".sh"):
        return Check(where, line, "shell", tokens[1], tuple(tokens[2:]))
    if name in OTHER_COMMANDS:
        return None
    raise AssertionError(f"{where}: unrecognised command {line!r}: teach tests/test_docs_code.py how to check it")


def _checks() -> list[Check]:
    checks = []
    for block in BLOCKS:
        if block.lang in SHELL:
            checks += [c for tokens in _commands(block.text) if (c := _classify(block.where, tokens))]
    return checks


CHECKS = _checks()
WRITTEN = {m[1]: b.text for b in TOML if (m := re.match(r"#\s*([\w./-]+\.toml)\b", b.text))}  # files docs define
CONFIG_FILE = re.compile(r"[\w./-]+\.(?:toml|ya?ml)")


def test_shell_commands_were_collected():
    kinds = {check.kind for check in CHECKS}
    assert {"treegrpo", "script", "module", "pip"} <= kinds, kinds


def _config_files(check: Check) -> list[str]:
    return [arg for arg in check.args if CONFIG_FILE.fullmatch(arg) and not arg.startswith("/")]


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in CHECKS if c.kind in ("treegrpo", "script")])
def test_files_a_command_names_exist(check):
    for name in _config_files(check):
        assert (REPO / name).is_file() or name in WRITTEN, f"{check.where}: {name} is not in the repository"
    if check.kind == "script":
        assert (REPO / check.target).is_file(), f"{check.where}: no script {check.target}"
    for arg in check.args:
        if arg.endswith(".py") and not arg.startswith("/"):
            assert (REPO / arg).is_file(), f"{check.where}: no file {arg}"


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in CHECKS if c.kind == "shell"])
def test_shell_scripts_a_command_runs_exist_and_parse(check):
    script = REPO / check.target
    assert script.is_file(), f"{check.where}: no script {check.target}"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{check.where}: {check.target} does not parse: {result.stderr.strip()}"


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in CHECKS if c.kind == "pip"])
def test_pip_install_extras_exist(check):
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))
    for arg in check.args:
        match = re.fullmatch(r"[.\w-]+\[(?P<extras>[\w,-]+)\]", arg)
        if match:
            missing = set(match["extras"].split(",")) - extras
            assert not missing, f"{check.where}: no extra {missing} in pyproject.toml ({sorted(extras)})"


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in CHECKS if c.kind == "python-c"])
def test_python_c_compiles_and_its_imports_resolve(check):
    compile(check.target, check.where, "exec")
    _check_imports(check.target, check.where)


class _ParserCaptured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


@cache
def script_parser(script: str, module: bool = False) -> argparse.ArgumentParser | None:
    """The parser a script (a path) or module builds, captured at its ``parse_args`` before it runs anything;
    ``None`` for a script that reads no arguments (no argparse in its source). Once per script: a script
    registers names (an estimator, a loss) as it is imported."""
    if not module and "argparse" not in (REPO / script).read_text():
        return None
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _ParserCaptured(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    saved = sys.argv
    sys.argv = [script]
    try:
        if module:
            runpy.run_module(script, run_name="__main__", alter_sys=False)
        else:
            runpy.run_path(str(REPO / script), run_name="__main__")
    except _ParserCaptured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
        sys.argv = saved
    raise AssertionError(f"{script} finished without parsing arguments")


def _parse(parser: argparse.ArgumentParser | None, args: list[str]) -> argparse.Namespace:
    """``parser.parse_args(args)``; its error message raised as an AssertionError."""
    if parser is None:  # a script without arguments
        assert not args, f"the script takes no arguments, given {args}"
        return argparse.Namespace()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(err.getvalue().strip()) from None


def _absolute(args: tuple[str, ...], cwd: Path) -> list[str]:
    """Repository-relative paths made absolute (the check runs in a temporary folder); docs-written files there."""
    out = []
    for arg in args:
        if arg in WRITTEN:
            (cwd / arg).write_text(WRITTEN[arg])
        out.append(str(REPO / arg) if not arg.startswith("/") and "/" in arg and (REPO / arg).exists() else arg)
    return out


def _check_treegrpo(argv: list[str]) -> None:
    from treegrpo import cli

    cli.load_plugins(argv)
    args = _parse(cli.build_parser(), argv)
    cli.resolve_config(args)  # what --print-config prints: every value valid, every option used
    if args.command == "bench":
        name = "gpu_iteration" if args.gpu else args.name
        _parse(script_parser(f"treegrpo.benchmarks.{name}", module=True), cli._bench_arguments(name, args))
    elif args.command == "pretrain":
        _parse(script_parser("treegrpo.embedded.pretrain", module=True), cli._after_dashes(list(args.script_args)))


def _check_one(check: Check, cwd: Path) -> str:
    """'' when ``check`` parses, else the error."""
    try:
        args = _absolute(check.args, cwd)
        if check.kind == "treegrpo":
            _check_treegrpo(args)
        else:
            _parse(script_parser(check.target, module=check.kind == "module"), args)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - every failure is reported, per command
        return f"{type(error).__name__}: {error}"
    return ""


def _runner(payload: dict[str, Any], cwd: Path) -> dict[str, dict[str, str]]:
    """The python blocks run and the commands parsed, in the interpreter this is called in. A property test
    in a block runs without hypothesis's 200 ms deadline, which a loaded CI machine can miss."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("docs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("docs")
    blocks = {where: _run_block(where, code, cwd / f"block-{i}") for i, (where, code) in enumerate(payload["blocks"])}
    checks = [Check(w, line, k, t, tuple(a)) for w, line, k, t, a in payload["checks"]]
    return {"blocks": blocks, "checks": {c.key: _check_one(c, cwd) for c in checks}}


@pytest.fixture(scope="module")
def docs_results(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Every default python block run and every command parsed, in one fresh interpreter (blocks, examples
    and plugins register names: they stay out of this one, and the interpreter starts once)."""
    payload = {"blocks": [[b.where, _block_code(b)] for b in RUN_FAST],
               "checks": [[c.where, c.line, c.kind, c.target, list(c.args)] for c in PARSED]}
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
            "from tests.test_docs_code import _runner\n"
            "print('\\n@@RESULT@@' + json.dumps(_runner(json.loads(sys.stdin.read()), Path.cwd())))\n")
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], input=json.dumps(payload),
                            cwd=tmp_path_factory.mktemp("docs-code"), capture_output=True, text=True, timeout=900,
                            check=False)
    assert "@@RESULT@@" in result.stdout, result.stderr[-4000:]
    return json.loads(result.stdout.rsplit("@@RESULT@@", 1)[1])


PARSED = [c for c in CHECKS if c.kind in ("treegrpo", "script", "module")]


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in PARSED])
def test_command_parses(check, docs_results):
    error = docs_results["checks"][check.key]
    assert error == "", f"{check.where}: {check.line}\n{error}"


# ------------------------------------------------------------------------------------------------
# Names in backticks.

INLINE = re.compile(r"(?P<ticks>`+)(?P<code>[^`]+?)(?P=ticks)")
DOTTED = re.compile(r"(?<![\w./-])(?:treegrpo|treeadv)(?:\.[A-Za-z_]\w*)+")
OPTION = re.compile(r"(?<![\w./])(?:--(?:no-)?)?(?P<key>(?P<section>" + "|".join(SECTIONS) +
                    r")\.(?P<field>[A-Za-z_]\w*))(?![\w(.])")


def _prose() -> dict[str, str]:
    """Each file's text outside fenced blocks: the docs, and the examples' module docstrings."""
    texts = {str(p.relative_to(REPO)): FENCE.sub("", p.read_text()) for p in DOC_FILES}
    for path in EXAMPLES:
        texts[str(path.relative_to(REPO))] = ast.get_docstring(ast.parse(path.read_text())) or ""
    return texts


def _spans() -> dict[str, list[str]]:
    spans: dict[str, list[str]] = {}
    for file, text in _prose().items():
        spans[file] = [m["code"] for m in INLINE.finditer(text)]
    return spans


SPANS = _spans()


def _where(pattern: re.Pattern, group: int | str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for file, codes in SPANS.items():
        for code in codes:
            for match in pattern.finditer(code):
                files = found.setdefault(match[group], [])
                if file not in files:
                    files.append(file)
    return dict(sorted(found.items()))


NAMES = _where(DOTTED, 0)
OPTION_KEYS = {key: files for key, files in _where(OPTION, "key").items()
               if key.rpartition(".")[2] not in FILE_SUFFIXES}  # train.py is a file


def resolve(name: str) -> object:
    """Import the longest importable prefix of ``name``, then get the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not (module == error.name or module.startswith(error.name + ".")):
                raise  # a missing dependency inside a module that exists
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(name)


def test_names_were_collected():
    assert len(NAMES) > 20 and len(OPTION_KEYS) > 20, (len(NAMES), len(OPTION_KEYS))


@pytest.mark.parametrize("name", NAMES)
def test_dotted_name_resolves(name):
    try:
        resolve(name)
    except (ImportError, AttributeError) as error:
        raise AssertionError(f"`{name}` in {', '.join(NAMES[name])} does not resolve: {error}") from None


@pytest.mark.parametrize("key", OPTION_KEYS)
def test_config_option_exists(key):
    known = {f"{option.section}.{option.name}" for option in options()}
    assert key in known, f"`{key}` in {', '.join(OPTION_KEYS[key])} is not a config option"


# ------------------------------------------------------------------------------------------------
# The problem builders' one import path.


def _problem_imports(code: str) -> list[str]:
    return [f"from {node.module} import {alias.name}" for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("treegrpo.problems")
            for alias in node.names if PROBLEM_BUILDERS.match(alias.name)]


def test_problem_builders_are_imported_from_treegrpo_problems():
    codes = {b.where: b.raw for b in PYTHON if "--8<--" not in b.raw}
    codes |= {c.where: c.target for c in CHECKS if c.kind == "python-c"}
    codes |= {str(p.relative_to(REPO)): p.read_text() for p in EXAMPLES}
    found = {where: wrong for where, code in codes.items()
             if (wrong := [line for line in _problem_imports(code) if (where, line) not in OTHER_PROBLEM_IMPORTS])}
    assert not found, f"import the problem builders from treegrpo.problems: {found}"
    for where, text in _prose().items():
        for name in DOTTED.findall(text):
            assert not re.search(r"\.(?:algos|envs)\.(?:\w+_problem|build_problem)$", name), f"{where}: {name}"
