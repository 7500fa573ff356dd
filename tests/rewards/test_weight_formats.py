"""A pickle where weights belong, in a reward folder or a pipeline folder, is refused in one line by its
bytes, before any parser reads it; a real torch checkpoint still loads."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from treegrpo.families.pipelines import PipelineLayoutError, check_weight_files
from treegrpo.formats import FileFormatError
from treegrpo.rewards.clip_models import load_state_dict


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "HPS_v2.1_compressed.pt", "weights.safetensors"])
def test_a_pickle_in_a_reward_folder_is_one_line(tmp_path, name):
    path = tmp_path / "clipscore" / name
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with pytest.raises(FileFormatError, match=r"^reward weights clipscore: .* (is not a torch checkpoint|is a pickle)"):
        load_state_dict(path)


def test_a_torch_checkpoint_that_needs_more_than_tensors_is_one_line_and_a_real_one_loads(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, good)
    assert torch.equal(load_state_dict(good)["w"], torch.ones(2))
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload()}, bad)
    with pytest.raises(FileFormatError, match=r"cannot be loaded as weights only \(UnpicklingError"):
        load_state_dict(bad)


def test_a_pipeline_component_with_only_pickled_weights_or_a_fake_safetensors_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    encoder = tmp_path / "text_encoder"
    encoder.mkdir()
    (encoder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(PipelineLayoutError, match=r"pytorch_model.bin is a pickle and .*text_encoder has no .safetensors"):
        check_weight_files(tmp_path)
    (encoder / "model.safetensors").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(PipelineLayoutError, match=r"model.safetensors is a pickle or a torch checkpoint"):
        check_weight_files(tmp_path)
