"""Make the embedded default's shipped weights: the digit classifier, the unseen judge and the base flow model.

    python -m treegrpo.embedded.pretrain --what all --out embedded/weights --seed 0

Both trainings are deterministic on CPU (``torch.use_deterministic_algorithms``, a fixed thread
count, seeded generators for initialisation, data order, noise and timesteps), so the command
re-makes the shipped files bit for bit on the same torch build; ``MANIFEST.json`` records the
command, the versions, each file's sha256 and the measured quality.

The base is trained to be *imperfect in a way RL can fix*: a short rectified-flow run whose plain
ODE samples at NFE 10 (no guidance) often drift between digits, so the classifier's probability
of the prompted digit sits well below 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from treegrpo.embedded._files import WEIGHTS_DIR, sha256
from treegrpo.embedded.classifier import DigitClassifier, accuracy, save_classifier
from treegrpo.embedded.data import all_prompts, digits_prompts, image_split, load_digit_images
from treegrpo.embedded.judge import DigitJudge, save_judge
from treegrpo.embedded.model import DEFAULT_NUM_STEPS, DigitsBase, build_transformer, sample_images, save_base
from treegrpo.embedded.text import TextEncoderConfig, TinyTextEncoder, WordTokenizer

THREADS = 2
BASE_STEPS = 800
CLASSIFIER_STEPS = 1500
JUDGE_STEPS = 3000


@contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    """Deterministic kernels, ``threads`` CPU threads and a seeded global RNG; restores the first two."""
    was_deterministic, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)


def _shift(images: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Random translations by up to ``pixels`` in each direction (zero = background padding)."""
    size = images.shape[-1]
    padded = F.pad(images, (pixels,) * 4, value=0.0)
    offsets = torch.randint(0, 2 * pixels + 1, (images.shape[0], 2), generator=generator)
    rows = torch.arange(size).view(1, size) + offsets[:, :1]
    cols = torch.arange(size).view(1, size) + offsets[:, 1:]
    batch = torch.arange(images.shape[0]).view(-1, 1, 1)
    return padded[:, 0][batch, rows.unsqueeze(-1), cols.unsqueeze(1)].unsqueeze(1)


def pretrain_classifier(seed: int = 0, steps: int = CLASSIFIER_STEPS, batch_size: int = 128,
                        threads: int = THREADS) -> tuple[DigitClassifier, dict[str, float]]:
    """Train the CNN on the train images (shifts + light noise); report held-out accuracy."""
    with _deterministic(seed, threads):
        return _fit_classifier(seed, steps, batch_size)


def _fit_classifier(seed: int, steps: int, batch_size: int) -> tuple[DigitClassifier, dict[str, float]]:
    images, labels = load_digit_images(16)
    images = (images + 1) / 2
    train, heldout = image_split(labels, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    model = DigitClassifier()
    _fit_augmented(model, images[train], labels[train], generator, steps, batch_size, weight_decay=1e-4)
    metrics = {"heldout_accuracy": accuracy(model, images[heldout], labels[heldout]),
               "train_accuracy": accuracy(model, images[train], labels[train]),
               "heldout_images": float(heldout.numel())}
    return model, metrics


def pretrain_judge(seed: int = 0, steps: int = JUDGE_STEPS, batch_size: int = 128,
                   threads: int = THREADS) -> tuple[DigitJudge, dict[str, float]]:
    """Train the MLP judge on the *held-out* images only (the classifier's train split is its test set)."""
    with _deterministic(seed, threads):
        return _fit_judge(seed, steps, batch_size)


def _fit_judge(seed: int, steps: int, batch_size: int) -> tuple[DigitJudge, dict[str, float]]:
    images, labels = load_digit_images(16)
    images = (images + 1) / 2
    classifier_train, judge_train = image_split(labels, seed=seed)  # the judge learns from what the CNN never saw
    generator = torch.Generator().manual_seed(seed + 3)
    model = DigitJudge()
    _fit_augmented(model, images[judge_train], labels[judge_train], generator, steps, batch_size, weight_decay=1e-2)
    metrics = {"unseen_accuracy": accuracy(model, images[classifier_train], labels[classifier_train]),
               "train_accuracy": accuracy(model, images[judge_train], labels[judge_train]),
               "train_images": float(judge_train.numel())}
    return model, metrics


def _fit_augmented(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   steps: int, batch_size: int, weight_decay: float) -> None:
    """Cross-entropy training with one-pixel shifts and light pixel noise, AdamW with a cosine schedule."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    model.train()
    for _ in range(steps):
        rows = torch.randint(images.shape[0], (batch_size,), generator=generator)
        batch = _shift(images[rows], generator)
        batch = (batch + 0.05 * torch.randn(batch.shape, generator=generator)).clamp(0, 1)
        loss = F.cross_entropy(model(batch), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


def build_base(seed: int = 0, width: int = 64, num_layers: int = 2, num_heads: int = 2) -> DigitsBase:
    """A fresh random-weight base (text encoder + transformer) of the shipped shape."""
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_texts(all_prompts().texts, max_length=8)
    encoder = TinyTextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size, dim=width, pooled_dim=width), tokenizer)
    transformer = build_transformer(joint_attention_dim=width, pooled_projection_dim=width, num_layers=num_layers,
                                    num_heads=num_heads, head_dim=width // num_heads)
    return DigitsBase.from_parts(transformer, encoder)


def pretrain_base(seed: int = 0, steps: int = BASE_STEPS, batch_size: int = 128, lr: float = 1e-3,
                  threads: int = THREADS, drop_prompt: float = 0.1, log_every: int = 0,
                  base: DigitsBase | None = None) -> DigitsBase:
    """Rectified-flow training of transformer and text encoder on all digits with all prompts.

    ``x_t = (1 - s) x0 + s noise``, target ``noise - x0``, timestep ``1000 s`` with ``s`` logit-normal;
    a fraction ``drop_prompt`` of prompts is replaced by ``""`` so guidance is possible later.
    """
    with _deterministic(seed, threads):
        return _fit_base(base or build_base(seed), seed, steps, batch_size, lr, drop_prompt, log_every)


def _fit_base(base: DigitsBase, seed: int, steps: int, batch_size: int, lr: float, drop_prompt: float,
              log_every: int) -> DigitsBase:
    images, labels = load_digit_images(16)
    prompts = all_prompts()
    by_digit = [torch.nonzero(prompts.labels == d).squeeze(-1) for d in range(10)]
    generator = torch.Generator().manual_seed(seed + 2)
    params = list(base.transformer.parameters()) + list(base.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(100, steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    base.transformer.train()
    base.text_encoder.train()
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x0 = images[rows]
        choice = torch.randint(1 << 30, (batch_size,), generator=generator)
        texts = [prompts.texts[int(by_digit[int(d)][int(c) % by_digit[int(d)].numel()])]
                 for d, c in zip(labels[rows], choice, strict=True)]
        dropped = torch.rand(batch_size, generator=generator) < drop_prompt
        texts = ["" if drop else text for text, drop in zip(texts, dropped.tolist(), strict=True)]
        noise = torch.randn(x0.shape, generator=generator)
        s = torch.sigmoid(torch.randn(batch_size, generator=generator)).view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        ids, mask = base.tokenizer(texts)
        hidden, pooled = base.text_encoder(ids, mask)
        prediction = base.transformer(hidden_states=xt, timestep=s.view(-1) * 1000, encoder_hidden_states=hidden,
                                      pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(prediction, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"base step {step + 1}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    base.transformer.eval()
    base.text_encoder.eval()
    return base


@torch.no_grad()
def evaluate_base(base: DigitsBase, classifier: DigitClassifier, num_steps: int = DEFAULT_NUM_STEPS,
                  samples_per_prompt: int = 8, split: str = "heldout", seed: int = 0) -> dict[str, float]:
    """Mean classifier probability of the prompted digit (and accuracy) for plain ODE samples."""
    prompts = digits_prompts(split)
    images = sample_images(base, prompts.texts, samples_per_prompt, num_steps=num_steps,
                           generator=torch.Generator().manual_seed(seed))
    labels = prompts.labels.repeat_interleave(samples_per_prompt)
    probs = torch.softmax(classifier(images).double(), -1)
    return {"classifier_prob": float(probs.gather(1, labels.view(-1, 1)).mean()),
            "classifier_accuracy": float((probs.argmax(-1) == labels).double().mean()),
            "samples": float(labels.numel()), "num_steps": float(num_steps)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m treegrpo.embedded.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=("classifier", "judge", "base", "all"), default="all")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"weights root (default: {WEIGHTS_DIR})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS)
    parser.add_argument("--classifier-steps", type=int, default=CLASSIFIER_STEPS)
    parser.add_argument("--judge-steps", type=int, default=JUDGE_STEPS)
    parser.add_argument("--eval-samples", type=int, default=8, help="ODE samples per held-out prompt in the base's report")
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads (part of what makes it bit-exact)")
    args = parser.parse_args(argv)
    out: Path = args.out
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    command = "python -m treegrpo.embedded.pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.what in ("classifier", "all"):
        start = time.perf_counter()
        classifier, metrics = pretrain_classifier(args.seed, args.classifier_steps, threads=args.threads)
        save_classifier(classifier, out / "classifier")
        manifest["classifier"] = {**metrics, "seconds": time.perf_counter() - start, "steps": args.classifier_steps,
                                  "command": command}
        print(f"classifier: held-out accuracy {metrics['heldout_accuracy']:.4f}", flush=True)
    if args.what in ("judge", "all"):
        start = time.perf_counter()
        judge, metrics = pretrain_judge(args.seed, args.judge_steps, threads=args.threads)
        save_judge(judge, out / "judge")
        manifest["judge"] = {**metrics, "seconds": time.perf_counter() - start, "steps": args.judge_steps,
                             "command": command}
        print(f"judge: accuracy {metrics['unseen_accuracy']:.4f} on the classifier's training images, which it never saw",
              flush=True)
    if args.what in ("base", "all"):
        from treegrpo.embedded.classifier import load_classifier

        start = time.perf_counter()
        base = pretrain_base(args.seed, args.base_steps, threads=args.threads, log_every=250)
        seconds = time.perf_counter() - start
        save_base(base, out / "base")
        quality = evaluate_base(base, load_classifier(out / "classifier"), samples_per_prompt=args.eval_samples)
        manifest["base"] = {**quality, "seconds": seconds, "steps": args.base_steps,
                            "parameters": sum(p.numel() for p in base.transformer.parameters()),
                            "text_encoder_parameters": sum(p.numel() for p in base.text_encoder.parameters()),
                            "command": command}
        print(f"base: held-out classifier probability at NFE 10 {quality['classifier_prob']:.4f} "
              f"({quality['samples']:.0f} samples)", flush=True)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    manifest.update({
        "command": command, "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
        "sha256": {str(p.relative_to(out)): sha256(p) for p in files},
    })
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
