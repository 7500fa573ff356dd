"""Prompt files in every supported layout, and the embedding cache (memory, disk, released encoders)."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict import TensorDict

from treegrpo.envs import sample_forest
from treegrpo.families.pipelines import load_pipeline
from treegrpo.families.prompts import PromptEmbeddings, load_prompts


def test_text_file_strips_drops_blank_and_repeated_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("  a cat \n\nA dog\na cat\n")
    assert load_prompts(path) == ["a cat", "A dog"]


def test_json_layouts(tmp_path):
    records = [{"prompt": "a cat", "human_preference": [1, 0]}, {"prompt": "a dog"}, {"prompt": "a cat"}]
    (tmp_path / "list.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "records.json").write_text(json.dumps(records))
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["x"], "test": [{"prompt": "z"}]}))
    hpd = tmp_path / "HPDv2"
    hpd.mkdir()
    (hpd / "train.json").write_text(json.dumps(records))
    (hpd / "test.json").write_text(json.dumps([{"prompt": "held out"}]))
    assert load_prompts(tmp_path / "list.json") == ["x", "y"]
    assert load_prompts(tmp_path / "records.json") == ["a cat", "a dog"]
    assert load_prompts(tmp_path / "splits.json", "test") == ["z"]
    assert load_prompts(hpd, "train") == ["a cat", "a dog"] and load_prompts(hpd, "test") == ["held out"]


@pytest.mark.parametrize(
    ("content", "split", "message"),
    [
        (None, "train", "does not exist; expected a .txt"),
        ("\n \n", "train", "holds no prompts"),
        (json.dumps([{"text": "a"}]), "train", "item 0 is neither a string nor a record with a 'prompt'"),
        (json.dumps({"train": ["a"]}), "test", r"has splits \['train'\], not 'test'"),
    ],
)
def test_prompt_file_errors(tmp_path, content, split, message):
    path = tmp_path / ("p.json" if content and content.startswith(("[", "{")) else "p.txt")
    if content is not None:
        path.write_text(content)
    with pytest.raises((FileNotFoundError, TypeError, ValueError), match=message):
        load_prompts(path, split)


class CountingEncoder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        codes = torch.tensor([[float(len(p)), float(sum(map(ord, p)))] for p in prompts])
        return TensorDict({"encoder_hidden_states": codes.unsqueeze(1).repeat(1, 3, 1)}, batch_size=[len(prompts)])


def test_memory_cache_encodes_each_prompt_once_and_evicts_least_recent():
    encoder = CountingEncoder()
    cache = PromptEmbeddings(encoder, "model", max_in_memory=2)
    first = cache(["a", "bb", "a"])
    assert encoder.calls == [["a", "bb"]]
    assert torch.equal(first[0]["encoder_hidden_states"], first[2]["encoder_hidden_states"])
    cache(["bb", "ccc"])  # "a" is now the least recently used and leaves the cache
    cache(["a"])
    assert encoder.calls == [["a", "bb"], ["ccc"], ["a"]]


def test_disk_cache_survives_a_new_process_without_encoders(tmp_path):
    encoder = CountingEncoder()
    written = PromptEmbeddings(encoder, "model", cache_dir=tmp_path, max_in_memory=0, batch_size=2)
    written.precompute(["a", "bb", "ccc"])
    assert [len(c) for c in encoder.calls] == [2, 1]
    reader = PromptEmbeddings(CountingEncoder(), "model", cache_dir=tmp_path, can_encode=lambda: False)
    torch.testing.assert_close(reader(["ccc", "a"]), written(["ccc", "a"]), rtol=0, atol=0)
    assert reader.stats["disk"] == 2
    with pytest.raises(KeyError, match="1 prompt.*not cached and the text encoders were released.*'dddd'"):
        reader(["a", "dddd"])
    other_model = PromptEmbeddings(encoder, "another model", cache_dir=tmp_path)
    other_model(["a"])  # a different identity never reads this model's files
    assert other_model.stats["disk"] == 0


def test_cached_embeddings_give_the_same_samples_as_on_the_fly_encoding(pipelines, tmp_path):
    """Encode once to disk, release the encoders, sample again: bit-identical latents (same seed)."""
    model = load_pipeline(pipelines["sd3"], max_sequence_length=16)
    prompts = ["a red cat", "two small birds"]
    transition = model.transition("flow_sde", 4, 0.7)

    def sample(cond):
        return sample_forest(model.denoiser, transition, cond, sde_steps=(1, 2), branching=(2, 2),
                             latent_shape=model.latent_shape(16), num_prompts=2,
                             generator=torch.Generator().manual_seed(3)).final

    on_the_fly = sample(model.encode(prompts))
    PromptEmbeddings(model.encode, model.identity(), cache_dir=tmp_path).precompute(prompts)
    model.release_text_encoders()
    cached = PromptEmbeddings(model.encode, model.identity(), cache_dir=tmp_path, can_encode=lambda: model.can_encode)
    assert torch.equal(sample(cached(prompts)), on_the_fly)
    assert cached.stats == {"memory": 0, "disk": 2, "encoded": 0}
