"""The generated tables of ``docs/results.md``, rendered from ``compare_methods.json``.

The page keeps its prose by hand; each table that comes from the benchmark sits between two marker
comments and is rewritten from the JSON::

    <!-- results-table: methods -->
    | method | ... |
    <!-- end results-table -->

Table names: ``methods`` (held-out scores and cost at the same number of iterations), ``wallclock``
(training reward at a common wall-clock budget), and one per ablation group present in the JSON
(``kl``, ``tree_shape``, ``alpha``, ``estimator``). ``benchmarks/compare_methods.py`` writes its
``compare_methods.md`` with the same renderer, so the page and the script's output cannot drift.

    python benchmarks/results_page.py             # rewrite the generated tables of docs/results.md
    python benchmarks/results_page.py --check     # exit 1 if the committed tables differ from the JSON

Only the standard library: the check runs without torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "compare_methods.json"
DEFAULT_PAGE = ROOT / "docs" / "results.md"

DIVERSITY = "eval/diversity/"
KEPT = "diversity_kept/"
START = re.compile(r"<!-- results-table: (?P<name>[a-z_]+) -->\n")
END = "<!-- end results-table -->"
ABLATIONS = ("kl", "tree_shape", "alpha", "estimator")


class PageError(ValueError):
    """A page whose markers cannot be filled: unknown table name, or a start marker with no end."""


def reward_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The held-out reward keys in reading order: the trained rewards, then the unseen judge, then the
    rest; diversity and a reward that is another's negative (JPEG incompressibility) are left out."""
    keys = {key for row in rows for key in row if key.startswith("eval/") and not key.startswith(DIVERSITY)}
    keys.discard("eval/jpeg_incompressibility")
    order = ["eval/classifier", "eval/aesthetic_proxy", "eval/aesthetic", "eval/judge", "eval/jpeg_compressibility"]
    return [key for key in order if key in keys] + sorted(keys - set(order))


def kept_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The diversity-kept keys (``diversity_kept/<measure>``), pixel first."""
    keys = {key for row in rows for key in row if key.startswith(KEPT)}
    return sorted(keys, key=lambda key: (key != f"{KEPT}pixel", key))


def spread(value: Sequence[float], seeds: int, digits: int = 3, percent: bool = False) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed (a spread of one run is not a spread)."""
    mean, std = value
    if percent:
        return f"{mean:.0%}" if seeds < 2 else f"{mean:.0%} ± {std:.0%}"
    return f"{mean:.{digits}f}" if seeds < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _score_cells(row: Mapping[str, Any], rewards: list[str], kept: list[str]) -> list[str]:
    """Held-out rewards (with the base model's score under the same sampler) and diversity kept."""
    cells = []
    for key in rewards:
        if key not in row:
            cells.append("")
            continue
        base = row.get(f"before_{key}")
        note = f" (base {base[0]:.3f})" if base is not None else ""
        cells.append(spread(row[key], row["seeds"]) + note)
    cells += [spread(row[key], row["seeds"], percent=True) if key in row else "" for key in kept]
    return cells


def _cost_cells(row: Mapping[str, Any]) -> list[str]:
    return [f"{row['seconds_per_iteration'][0]:.2f}", f"{row['nfe_per_iteration']:.0f}",
            f"{row['backward_rows_per_iteration']:.0f}"]


def _score_header(rewards: list[str], kept: list[str]) -> list[str]:
    return [f"held-out {key[5:]}" for key in rewards] + [f"{key[len(KEPT):]} diversity kept" for key in kept]


def methods_table(data: Mapping[str, Any]) -> str:
    """Every method at the same number of iterations: its recipe's shape, held-out scores, cost."""
    rows = [row for row in data["table"] if row["group"] == "methods"]
    rewards, kept = reward_columns(rows), kept_columns(rows)
    header = ["method", "images / prompt", "sampling steps", "KL coef", *_score_header(rewards, kept),
              "s / iteration", "NFE / iteration", "backward rows / iteration", "wall-clock (s)"]
    body = [[row["name"], f"{row['images_per_prompt']:g}", f"{row['num_steps']:g}", f"{row['kl_coef']:g}",
             *_score_cells(row, rewards, kept), *_cost_cells(row), f"{row['wall_seconds'][0]:.0f}"] for row in rows]
    return _table(header, body)


def wallclock_table(data: Mapping[str, Any]) -> str:
    """Training reward at the common wall-clock budget (``meta['wallclock']``) beside the reward at the
    same number of iterations."""
    budget = data["meta"]["wallclock"]["budget_seconds"]
    rows = [row for row in data["table"] if row["group"] == "methods"]
    header = ["method", f"iterations done in {budget:.0f} s", f"training reward at {budget:.0f} s",
              f"training reward at {data['meta']['iterations']} iterations"]
    body = []
    for row in rows:
        at_budget = row["train_reward_at_budget"]
        reward = "no iteration finished" if at_budget is None else spread(at_budget, row["seeds"])
        body.append([row["name"], f"{row['iterations_at_budget']:.1f}".removesuffix(".0"), reward,
                     spread(row["final_train_reward"], row["seeds"])])
    return _table(header, body)


def ablation_table(data: Mapping[str, Any], group: str) -> str:
    """One ablation group: held-out scores and cost per setting."""
    rows = [row for row in data["table"] if row["group"] == group]
    rewards, kept = reward_columns(rows), kept_columns(rows)
    header = ["run", *_score_header(rewards, kept), "s / iteration", "NFE / iteration", "backward rows / iteration"]
    body = [[row["name"], *_score_cells(row, rewards, kept), *_cost_cells(row)] for row in rows]
    return _table(header, body)


def render_tables(data: Mapping[str, Any]) -> dict[str, str]:
    """Every table the JSON supports, by marker name, as Markdown without a trailing newline."""
    groups = {row["group"] for row in data["table"]}
    tables = {}
    if "methods" in groups:
        tables["methods"] = methods_table(data)
        if "wallclock" in data["meta"]:
            tables["wallclock"] = wallclock_table(data)
    for group in ABLATIONS:
        if group in groups:
            tables[group] = ablation_table(data, group)
    return tables


def fill(page: str, tables: Mapping[str, str]) -> str:
    """``page`` with the text between each ``<!-- results-table: NAME -->`` line and the next
    ``<!-- end results-table -->`` replaced by ``tables[NAME]``."""
    parts, position = [], 0
    for match in START.finditer(page):
        name = match.group("name")
        if name not in tables:
            raise PageError(f"<!-- results-table: {name} -->: the JSON has no such table; expected one of "
                            f"{', '.join(tables) or '(none)'}")
        end = page.find(END, match.end())
        if end < 0:
            raise PageError(f"<!-- results-table: {name} --> has no '{END}' after it")
        parts += [page[position:match.end()], tables[name], "\n"]
        position = end
    parts.append(page[position:])
    return "".join(parts)


def generated_names(page: str) -> list[str]:
    """The table names the page's markers ask for, in order."""
    return [match.group("name") for match in START.finditer(page)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"benchmark results (default: {DEFAULT_JSON})")
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE, help=f"Markdown page (default: {DEFAULT_PAGE})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the page's generated tables differ from the JSON")
    args = parser.parse_args(argv)
    page = args.page.read_text()
    try:
        new = fill(page, render_tables(json.loads(args.json.read_text())))
    except PageError as error:
        print(f"{args.page}: {error}", file=sys.stderr)
        return 2
    names = generated_names(page)
    if not names:
        print(f"{args.page}: no '<!-- results-table: NAME -->' markers; nothing to {'check' if args.check else 'write'}")
        return 0
    if new == page:
        print(f"{args.page}: generated tables ({', '.join(names)}) match {args.json}")
        return 0
    if args.check:
        print(f"{args.page}: generated tables differ from {args.json}; run python benchmarks/results_page.py "
              f"--json {args.json} --page {args.page}", file=sys.stderr)
        return 1
    args.page.write_text(new)
    print(f"{args.page}: rewrote {', '.join(names)} from {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
