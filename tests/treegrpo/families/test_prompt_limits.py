"""Prompt files that would stall the text encoders are refused in one line before they are read whole."""

from __future__ import annotations

import time

import pytest

from treegrpo.families import prompts
from treegrpo.families.prompts import MAX_PROMPT_CHARS, PromptFileError, load_prompts


def test_a_huge_one_line_prompt_file_is_one_line_at_once(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat " * 3_500_000)  # 21 MB on one line
    start = time.perf_counter()
    with pytest.raises(PromptFileError, match=rf"prompt 1 is 21000000 characters long; expected at most {MAX_PROMPT_CHARS}"):
        load_prompts(path)
    assert time.perf_counter() - start < 30
    records = tmp_path / "prompts.json"
    records.write_text('["ok", "' + "x" * (MAX_PROMPT_CHARS + 1) + '"]')
    with pytest.raises(PromptFileError, match="prompt 2 is"):
        load_prompts(records, None)


def test_a_file_over_the_size_limit_deep_json_and_non_utf8_are_one_line(tmp_path, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\na dog\n")
    monkeypatch.setattr(prompts, "MAX_FILE_BYTES", 8)
    with pytest.raises(PromptFileError, match=r"is 12 bytes; expected a prompt file of at most 8 bytes"):
        load_prompts(path)
    monkeypatch.undo()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PromptFileError, match="nests too deep"):
        load_prompts(deep, None)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"caf\xe9\n\xff\xfe")
    with pytest.raises(PromptFileError, match="is not UTF-8 text"):
        load_prompts(binary)
