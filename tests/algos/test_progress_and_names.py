"""Researcher-facing surface: the progress bar shows only what the loss measured, and the names the
tutorials give resolve."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from treegrpo.algos.trainer import progress_terms

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_progress_bar_shows_clip_and_kl_only_when_the_loss_reports_them():
    reinforce = {"reward_mean": 0.5, "loss": 0.1, "images_per_second": 10.0, "approx_kl": 1e-4}
    assert set(progress_terms(reinforce)) == {"reward", "loss", "kl", "img_s"}  # no clip=0.00 for REINFORCE
    ppo = {**reinforce, "clip_fraction": 0.25}
    assert progress_terms(ppo)["clip"] == "0.25"


def test_the_problem_builders_have_one_import_path():
    from treegrpo.problems import digits_problem, toy2d_problem
    from treegrpo.problems.digits import digits_problem as defined

    assert digits_problem is defined and callable(toy2d_problem)


def test_every_dotted_treegrpo_name_in_the_compose_tutorial_resolves():
    text = (DOCS / "tutorials" / "compose.md").read_text()
    names = set(re.findall(r"`(treegrpo(?:\.\w+)+)", text))
    assert names, "the tutorial names no treegrpo object"
    for name in sorted(names):
        module, _, attribute = name.rpartition(".")
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError:
            pass
        assert hasattr(importlib.import_module(module), attribute), f"docs/tutorials/compose.md names {name}"


def test_treegrpo_algos_does_not_re_export_the_problem_builders():
    """One documented path: the API page of treegrpo.algos lists its __all__, so a builder there would
    be documented twice."""
    import treegrpo.algos

    assert not {"Problem", "build_problem", "toy2d_problem", "digits_problem"} & set(treegrpo.algos.__all__)
    assert not hasattr(treegrpo.algos, "toy2d_problem")
