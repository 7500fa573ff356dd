"""MkDocs hooks: the parts of the site generated from the code at build time, so they cannot go stale.

- ``on_config``: a search-path layout for the API reference, and the repository as the snippets'
  base path. The distribution maps ``treegrpo.envs`` onto the top-level ``envs/`` folder (and so on);
  griffe reads sources statically and does not follow that mapping, so ``build/docs-api-src/`` gets
  the packages arranged under their import names, read from ``pyproject.toml``'s ``package-dir``.
- ``on_files``: the advantage-tree figure of the Concepts page (sampled and backed up by the project's
  own ``treegrpo.envs`` and ``treeadv``, drawn with matplotlib), and the committed benchmark figures,
  added to the site without being written into ``docs/``.
- ``on_page_markdown``: ``<!-- generated: WHAT ARG -->`` markers become tables or API blocks:
  ``config-options [SECTION]`` (every config field, from ``treegrpo.config.options()``),
  ``presets``, ``window-table`` (the window's cost for a few alphas), ``cli-flags COMMAND`` (a
  subcommand's own flags, from ``treegrpo.cli.build_parser()``), ``script-flags PATH|MODULE``
  (a script's argparse flags), ``bench-scripts`` (every ``benchmarks/*.py``) and ``api MODULE`` (a
  mkdocstrings block listing the module's ``__all__``, with a warning for any name without a
  docstring). Links to ``../benchmarks/results/*`` (which work when reading ``docs/`` on GitHub)
  are pointed at the site's copies.
- ``on_page_content``: math (``pymdownx.arithmatex``'s generic output) becomes MathML, which browsers
  render natively: no JavaScript, no CDN. Sphinx roles left in docstrings (``:func:`x```) become
  code spans.
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib
import io
import logging
import os
import posixpath
import re
import runpy
import shutil
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
API_SRC = REPO / "build" / "docs-api-src"
TREE_FIGURE = "assets/advantage_tree.png"
RESULTS = REPO / "benchmarks" / "results"
RESULTS_URI = "assets/results"
MARKER = re.compile(r"^<!-- generated: (?P<what>[a-z-]+)(?: (?P<arg>\S+))? -->$", re.MULTILINE)
log = logging.getLogger("mkdocs.hooks.treegrpo")


# ------------------------------------------------------------------------------------------------
# on_config: import names laid out as folders, for griffe.


def package_dirs() -> dict[str, Path]:
    """Import name to source folder, from ``[tool.setuptools] package-dir`` in ``pyproject.toml``."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in setuptools["package-dir"].items()}


def build_api_layout(root: Path = API_SRC) -> None:
    """Symlink each package folder under its import path; a package with remapped subpackages becomes a
    real folder holding copies of its own modules plus links to the subpackages."""
    mapping = package_dirs()
    for name in sorted(mapping, key=lambda n: n.count(".")):
        target = root / name.replace(".", "/")
        has_remapped_children = any(other.startswith(name + ".") for other in mapping)
        if target.is_symlink() or target.is_file():
            target.unlink()
        if not has_remapped_children:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(mapping[name], target_is_directory=True)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for entry in mapping[name].iterdir():
            link = target / entry.name  # a real subpackage (treegrpo/problems): linked as it is
            if entry.is_dir() and (entry / "__init__.py").is_file() and f"{name}.{entry.name}" not in mapping:
                if not link.is_symlink():
                    link.symlink_to(entry, target_is_directory=True)
                continue
            if entry.suffix == ".py":  # copied, not linked: griffe resolves links and would look for
                copy = target / entry.name  # the subpackages beside the real file
                if copy.is_symlink():
                    copy.unlink()
                shutil.copyfile(entry, copy)


@event_priority(100)  # before mkdocstrings' on_config, which drops search paths that do not exist yet
def on_config(config: Any) -> Any:
    build_api_layout()
    _LOADER.clear()
    # Snippets (the tutorials include examples/*.py) resolve from the repository, wherever mkdocs runs.
    config["mdx_configs"].setdefault("pymdownx.snippets", {})["base_path"] = [str(REPO)]
    return config


# ------------------------------------------------------------------------------------------------
# on_files: figures.


def draw_advantage_tree() -> bytes:
    """One k=3, d=3 tree sampled by ``TreeSampler`` on Gaussian data, its leaves scored, advantages backed
    up with ``logprob_softmax``; nodes coloured by advantage, edge widths by backup weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.colors import TwoSlopeNorm

    import treeadv
    from treegrpo import envs

    num_steps, k, d = 10, 3, 3
    data = envs.GaussianData(torch.zeros(4), torch.eye(4))
    transition = envs.FlowSDE(envs.FlowTimesteps.linear(num_steps, shift=3.0), noise_level=0.7)
    window = envs.GeometricWindow(num_steps=num_steps, depth=d, alpha=0.5, seed=0)
    sampler = envs.TreeSampler(data.velocity_model(), transition, branching=k, depth=d, window=window)
    epoch = next(e for e in range(100) if 1 <= window.start(e) <= 3)  # a window with an ODE prefix to draw
    rollout = sampler.sample(None, num_prompts=1, latent_shape=(4,), epoch=epoch,
                             generator=torch.Generator().manual_seed(1))
    tree = rollout.tree
    target = torch.tensor([1.0, 0.0, -1.0, 0.5])
    rewards = -(rollout.final - target).square().sum(1)  # [L]
    leaf_adv = treeadv.leaf_advantages(rewards, tree.group[tree.leaves()])
    result = treeadv.backup_with_weights(tree, tree.scatter_leaves(leaf_adv))

    # Leaves evenly spaced; each internal node centred over its children.
    x = torch.zeros(tree.num_nodes)
    x[tree.leaves()] = torch.arange(tree.leaves().numel(), dtype=torch.float32)
    for level in reversed(tree.levels()[:-1]):
        for node in level.tolist():
            x[node] = x[tree.children(node)].mean()
    y = -tree.depth.float()
    advantage = result.advantage
    norm = TwoSlopeNorm(vcenter=0.0, vmin=float(advantage.min()) - 1e-6, vmax=float(advantage.max()) + 1e-6)
    start = rollout.sde_steps[0]

    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=110)
    for node in (tree.parent >= 0).nonzero().squeeze(1).tolist():
        parent = int(tree.parent[node])
        ax.plot([x[parent], x[node]], [y[parent], y[node]], color="0.35", zorder=1,
                linewidth=0.6 + 3.0 * float(result.weight[node]))
    points = ax.scatter(x, y, c=advantage, cmap="RdBu", norm=norm, s=90, edgecolors="black", linewidths=0.6, zorder=2)
    root_x = float(x[tree.roots()[0]])
    ax.plot([root_x, root_x], [0.0, 0.75], color="0.6", linestyle="--", linewidth=1.2)
    ax.text(root_x + 0.4, 0.55, f"ODE prefix: steps 0..{start - 1}, shared" if start else "no ODE prefix (s = 0)",
            fontsize=9, color="0.3")
    for leaf in tree.leaves().tolist():
        ax.plot([x[leaf], x[leaf]], [y[leaf], y[leaf] - 0.45], color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    ax.text(0, -d - 0.75, f"ODE tail to t = 0: {num_steps - start - d} steps per leaf, then the reward", fontsize=9,
            color="0.3")
    ax.set_yticks([-depth for depth in range(d + 1)],
                  [f"root\n(step {start})"] + [f"depth {depth}\n(step {start + depth})" for depth in range(1, d)]
                  + [f"depth {d}: leaves\n(step {start + d})"])
    ax.set_xticks([])
    ax.set_ylim(-d - 0.95, 0.95)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"One TreeGRPO tree: T = {num_steps}, k = {k}, d = {d}, window at steps {start}..{start + d - 1}; "
                 f"{tree.leaves().numel()} leaves, {rollout.nfe} model evaluations", fontsize=10)
    fig.colorbar(points, ax=ax, fraction=0.03, pad=0.01, label="advantage of the edge into the node")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, TREE_FIGURE, content=draw_advantage_tree()))
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{RESULTS_URI}/{figure.name}", abs_src_path=str(figure)))
    return files


# ------------------------------------------------------------------------------------------------
# on_page_markdown: generated tables and API blocks.


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: HTML escaped, pipes and asterisks escaped, repo paths relative."""
    text = str(text).replace(str(REPO) + os.sep, "").replace(str(REPO), ".")
    return html.escape(text, quote=False).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def code(text: Any) -> str:
    """A code span for a table cell (pipes escaped for the table)."""
    text = str(text).replace(str(REPO) + os.sep, "").replace(str(REPO), ".")
    return "`" + text.replace("|", "\\|") + "`" if text != "" else "`''`"


def default_text(value: Any) -> str:
    """A default as it is typed on the command line: lists comma-separated, booleans lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def config_options_table(section: str | None) -> str:
    """One table per config section (or only ``section``): flag, accepted value, default, help."""
    from treegrpo.config import SECTIONS, options

    rows: dict[str, list[str]] = {}
    for option in options():
        if section is not None and option.section != section:
            continue
        flag = f"--{option.section}.{option.name}"
        if option.kind == "bool":
            flag, value = f"{flag}, --no-{option.section}.{option.name}", "flag"
        elif option.choices:
            value = " \\| ".join(f"`{choice}`" for choice in option.choices)
        else:
            value = option.kind
        rows.setdefault(option.section, []).append(
            f"| `{flag}` | {value} | {code(default_text(option.default))} | {cell(option.help)} |")
    if not rows:
        raise PluginError(f"config-options: no config section {section!r}; sections: {list(SECTIONS)}")
    blocks = []
    for name, lines in rows.items():
        summary = (SECTIONS[name].__doc__ or "").strip().splitlines()[0]
        header = f"### `[{name}]`\n\n{cell(summary)}\n\n" if section is None else ""
        blocks.append(header + "| option | value | default | meaning |\n|---|---|---|---|\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def flags_table(parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> str:
    """The parser's own arguments (not ``--help``, not ``skip``) as a table."""
    skipped = set(skip)
    rows = []
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.dest in skipped:
            continue
        names = ", ".join(action.option_strings) if action.option_strings else action.dest
        if action.nargs == argparse.REMAINDER:
            names = f"-- {action.dest.upper()}..."
        if action.choices:
            value = " \\| ".join(f"`{choice}`" for choice in action.choices)
        elif action.nargs == 0:
            value = "flag"
        else:
            value = cell(action.metavar or getattr(action.type, "__name__", "str"))
            if action.nargs in ("+", "*"):
                value += " ..."
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS or default == []
        shown = "" if hidden or action.nargs == argparse.REMAINDER else code(default_text(default))
        help_text = (action.help or "").replace("%%", "%")
        rows.append(f"| `{names}` | {value} | {shown} | {cell(help_text)} |")
    if not rows:
        return "This command takes no options of its own."
    return "| option | value | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)


def cli_flags_table(command: str) -> str:
    """``treegrpo COMMAND``'s flags other than the one-per-config-field ones."""
    from treegrpo.cli import build_parser
    from treegrpo.config import options

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command not in subparsers.choices:
        raise PluginError(f"cli-flags: no subcommand {command!r}; subcommands: {sorted(subparsers.choices)}")
    fields = {f"{option.section}.{option.name}" for option in options()}
    return flags_table(subparsers.choices[command], skip=fields)


class _ParserCaptured(Exception):
    """Raised by the patched ``parse_args`` to hand the script's parser back without running the script."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def script_parser(script: str) -> argparse.ArgumentParser:
    """The argparse parser a script (``benchmarks/x.py``) or module (``treegrpo.embedded.pretrain``) builds in
    its ``main``: ``main`` is called with ``parse_args`` patched to stop there."""
    if script.endswith(".py"):
        namespace = runpy.run_path(str(REPO / script), run_name="treegrpo_docs_script")
        main: Callable[..., Any] = namespace["main"]
    else:
        main = importlib.import_module(script).main
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _ParserCaptured(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        try:
            main([])
        except TypeError:  # a main() that reads sys.argv itself
            main()
    except _ParserCaptured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise PluginError(f"script-flags: {script}'s main() returned without parsing arguments")


def bench_scripts() -> str:
    """Every ``benchmarks/*.py``: its first docstring line, how to run it, and its flags."""
    blocks = []
    for path in sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_")):
        name = path.stem
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        via = "`treegrpo bench --gpu -- ARGS`" if name == "gpu_iteration" else f"`treegrpo bench --name {name} -- ARGS`"
        blocks.append(f"### `{name}`\n\n{cell(summary)}\n\nRun: `python benchmarks/{name}.py ARGS` or {via}.\n\n"
                      + flags_table(script_parser(f"benchmarks/{name}.py")))
    return "\n\n".join(blocks)


def public_names(module: str) -> list[str]:
    """A module's ``__all__``, read from its source without importing it."""
    mapping = package_dirs()
    package = max((name for name in mapping if module == name or module.startswith(name + ".")), key=len, default=None)
    if package is None:
        raise PluginError(f"api: {module} is not a module of this distribution")
    path = mapping[package].joinpath(*module[len(package):].split(".")[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise PluginError(f"api: {source} has no __all__; the reference documents exactly the names listed there")


_LOADER: list[Any] = []  # one griffe loader per build


def check_docstrings(module: str, names: list[str]) -> None:
    """Warn (which fails the strict build) for every public name without a docstring; constants need an
    attribute docstring, the string literal after the assignment."""
    import griffe

    if not _LOADER:
        _LOADER.append(griffe.GriffeLoader(search_paths=[str(API_SRC)], allow_inspection=False))
    loaded = _LOADER[0].load(module, try_relative_path=False)
    for name in names:
        try:
            docstring = loaded[name].docstring
        except (KeyError, griffe.AliasResolutionError) as error:
            log.warning("%s.%s is in __all__ but cannot be found (%s)", module, name, error)
            continue
        if docstring is None or not docstring.value.strip():
            log.warning("%s.%s has no docstring; the API reference needs one", module, name)


def api_block(module: str) -> str:
    """A mkdocstrings block rendering exactly ``module.__all__``, in that order."""
    names = public_names(module)
    check_docstrings(module, names)
    members = "\n".join(f"        - {name}" for name in names)
    return f"::: {module}\n    options:\n      members:\n{members}"


def window_table(arg: str | None = None) -> str:
    """Start distribution and expected cost of the geometric window for a few alphas, at the default tree."""
    import torch

    from treegrpo.config import SamplingConfig
    from treegrpo.envs import tree_nfe, truncated_geometric_probs

    defaults = SamplingConfig()
    steps, k, d = defaults.num_steps, defaults.branching, defaults.depth
    rows = []
    for alpha in (0.25, 0.5, 0.75, 1.0):
        probs = truncated_geometric_probs(alpha, steps - d + 1)  # [T - d + 1], float64
        starts = torch.arange(probs.numel(), dtype=torch.float64)
        nfe = sum(float(p) * tree_nfe(steps, k, d, s) for s, p in enumerate(probs))
        rows.append(f"| {alpha:g}{' (default)' if alpha == defaults.alpha else ''} | {float(probs[0]):.3f} | "
                    f"{float((probs * starts).sum()):.2f} | {nfe:.1f} | {nfe / (k**d * steps):.2f} |")
    header = (f"Computed by `truncated_geometric_probs` and `tree_nfe` for the default tree (T = {steps}, k = {k}, "
              f"d = {d}); a trajectory method sampling the same {k**d} images per prompt spends {k**d * steps} "
              "evaluations.\n\n| alpha | P(s = 0) | mean start | mean NFE per tree | vs trajectories |\n"
              "|---|---|---|---|---|\n")
    return header + "\n".join(rows)


def presets_table(arg: str | None = None) -> str:
    """What each model kind's preset changes from the paper's defaults (each kind's ``preset``, declared
    next to its problem and registered in ``treegrpo.kinds.KINDS``)."""
    from treegrpo.kinds import model_kinds

    rows = [f"| `{kind}` | " + "<br>".join(code(item) for item in entry.preset) + " |"
            for kind, entry in model_kinds().items()]
    return "| `model.kind` | preset, applied over `Config()` |\n|---|---|\n" + "\n".join(rows)


GENERATORS: dict[str, Callable[[str | None], str]] = {
    "presets": presets_table,
    "window-table": window_table,
    "config-options": config_options_table,
    "cli-flags": lambda arg: cli_flags_table(str(arg)),
    "script-flags": lambda arg: flags_table(script_parser(str(arg))),
    "bench-scripts": lambda arg: bench_scripts(),
    "api": lambda arg: api_block(str(arg)),
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def generate(match: re.Match[str]) -> str:
        what, arg = match["what"], match["arg"]
        if what not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown marker {what!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[what](arg)

    markdown = MARKER.sub(generate, markdown)
    here = posixpath.dirname(page.file.src_uri)
    results = posixpath.relpath(RESULTS_URI, here or ".")
    return markdown.replace("](../benchmarks/results/", f"]({results}/")


# ------------------------------------------------------------------------------------------------
# on_page_content: MathML and Sphinx roles.

MATH = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.DOTALL)
SPHINX_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(?P<tilde>~?)(?P<name>[^<]+)</code>")


def to_mathml(match: re.Match[str]) -> str:
    """One arithmatex span or div (``\\(...\\)`` / ``\\[...\\]``) as MathML."""
    from latex2mathml.converter import convert

    tex = html.unescape(match["tex"]).strip()
    block = match["tag"] == "div"
    tex = tex[2:-2] if tex[:2] in ("\\(", "\\[") else tex
    try:
        return convert(tex.strip(), display="block" if block else "inline")
    except Exception as error:
        raise PluginError(f"cannot convert math {tex!r} to MathML: {error}") from error


def on_page_content(content: str, page: Any, config: Any, files: Files) -> str:
    content = MATH.sub(to_mathml, content)
    return SPHINX_ROLE.sub(
        lambda m: f"<code>{m['name'].rsplit('.', 1)[-1] if m['tilde'] else m['name']}</code>", content)
