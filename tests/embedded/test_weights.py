"""Shipped weights, loaders, missing-file errors and bit-exact re-making by the pretraining command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel

from treegrpo.embedded import pretrain
from treegrpo.embedded._files import WEIGHTS_DIR, MissingWeightsError, sha256
from treegrpo.embedded.classifier import load_classifier
from treegrpo.embedded.judge import load_judge
from treegrpo.embedded.model import load_base, sample_images


def test_shipped_weights_match_their_manifest() -> None:
    manifest = json.loads((WEIGHTS_DIR / "MANIFEST.json").read_text())
    files = sorted(str(p.relative_to(WEIGHTS_DIR)) for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert sorted(manifest["sha256"]) == [name for name in files if name != "MANIFEST.json"]
    for name, digest in manifest["sha256"].items():
        assert sha256(WEIGHTS_DIR / name) == digest, name
    assert manifest["command"].startswith("python -m treegrpo.embedded.pretrain")
    size = sum((WEIGHTS_DIR / name).stat().st_size for name in manifest["sha256"])
    assert size < 4_000_000  # a few MB at most
    # The base is imperfect in a way RL can fix; the classifier and the judge are trustworthy.
    assert 0.6 < manifest["base"]["classifier_prob"] < 0.9
    assert manifest["classifier"]["heldout_accuracy"] > 0.98
    assert manifest["judge"]["unseen_accuracy"] > 0.95 and manifest["judge"]["train_images"] == 359
    assert all(manifest[part]["command"].startswith("python -m treegrpo.embedded.pretrain")
               for part in ("base", "classifier", "judge"))


def test_shipped_models_load_offline_and_sample() -> None:
    base = load_base()
    assert base.latent_shape == (1, 16, 16)
    assert not base.transformer.training and not base.text_encoder.training
    images = sample_images(base, ["a handwritten seven", "the digit 3"], 2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    logits = load_classifier()(images)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("what", "missing"), [
    ("base", "transformer/diffusion_pytorch_model.safetensors"),
    ("base", "text_encoder/vocab.json"),
    ("classifier", "model.safetensors"),
    ("judge", "config.json"),
])
def test_a_missing_file_names_itself_and_the_command_that_makes_it(tiny_weights: Path, tmp_path: Path, what: str,
                                                                   missing: str) -> None:
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights, root)
    (root / what / missing).unlink()
    loader = {"base": load_base, "classifier": load_classifier, "judge": load_judge}[what]
    with pytest.raises(MissingWeightsError) as error:
        loader(root / what)
    message = str(error.value)
    assert "\n" not in message
    assert str(root / what / missing) in message
    assert f"python -m treegrpo.embedded.pretrain --what {what} --out {root} --seed 0" in message


def test_loaders_use_from_pretrained_on_the_local_folder(tiny_weights: Path) -> None:
    base = load_base(tiny_weights / "base")
    direct = SD3Transformer2DModel.from_pretrained(tiny_weights / "base" / "transformer", local_files_only=True)
    for (name, mine), theirs in zip(base.transformer.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_pretraining_is_bit_exact_and_seed_dependent(tiny_weights: Path, tmp_path: Path) -> None:
    """The fixture's weights were made by ``pretrain.main``; a second run of the same command matches."""
    args = ["--base-steps", "3", "--classifier-steps", "3", "--judge-steps", "3", "--eval-samples", "1"]
    assert pretrain.main(["--what", "all", "--out", str(tmp_path / "again"), *args]) == 0
    first = json.loads((tiny_weights / "MANIFEST.json").read_text())["sha256"]
    second = json.loads((tmp_path / "again" / "MANIFEST.json").read_text())["sha256"]
    assert first == second
    assert pretrain.main(["--what", "all", "--out", str(tmp_path / "other"), "--seed", "1", *args]) == 0
    third = json.loads((tmp_path / "other" / "MANIFEST.json").read_text())["sha256"]
    assert all(third[name] != first[name] for name in first if name.endswith(".safetensors"))


def test_pretraining_restores_global_torch_settings(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    pretrain.pretrain_classifier(0, steps=1, batch_size=4, threads=1)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_pretraining_lowers_the_flow_loss() -> None:
    """Sixty steps of the real recipe on a tiny base cut the rectified-flow loss."""
    from treegrpo.embedded.data import load_digit_images

    images, _ = load_digit_images(16)
    x0 = images[:64]
    generator = torch.Generator().manual_seed(5)
    noise, s = torch.randn(x0.shape, generator=generator), torch.rand(64, generator=generator).view(-1, 1, 1, 1)

    def loss(base: pretrain.DigitsBase) -> float:
        hidden = base.encode([""] * 64)
        with torch.no_grad():
            v = base.transformer(hidden_states=(1 - s) * x0 + s * noise, timestep=s.view(-1) * 1000,
                                 encoder_hidden_states=hidden["encoder_hidden_states"],
                                 pooled_projections=hidden["pooled_projections"], return_dict=False)[0]
        return float((v - (noise - x0)).square().mean())

    fresh = pretrain.build_base(0, width=32, num_layers=1)
    before = loss(fresh)
    trained = pretrain.pretrain_base(0, steps=60, batch_size=32, lr=3e-3, base=pretrain.build_base(0, width=32, num_layers=1))
    assert loss(trained) < 0.75 * before
