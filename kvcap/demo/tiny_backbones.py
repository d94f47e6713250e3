"""Build tiny but real backbones for tests, the demo and CPU benchmarks.

The architectures are the real ones (``CLIPVisionModel``, ``Qwen3ForCausalLM``, ``SiglipModel``), only their
sizes are small, so every code path that runs on the full system runs here too. The Korean byte-level BPE
tokenizer is trained once and shipped in ``assets/tiny-korean-bpe``; it is saved as the Qwen tokenizer class
with Qwen3's special tokens and kvcap's Qwen3 chat template.

Usage::

    python kvcap/demo/tiny_backbones.py --out DIR              # writes DIR/{clip-vision,qwen3,siglip}
    python kvcap/demo/tiny_backbones.py --retrain-tokenizer    # rebuilds assets/tiny-korean-bpe
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from kvcap.cpu_threads import torch_threads
from processing.processing_kvcap import DEFAULT_CHAT_TEMPLATE

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS_DIR / "tiny-korean-bpe"
KOREAN_TEXT = ASSETS_DIR / "korean_text.txt"
SEED = 0
# Raised whenever the backbones or their pretraining change, so that demo assets built earlier are rebuilt.
RECIPE_VERSION = 6
RECIPE_FILE = "recipe.json"
# The pretraining runs at this many threads whatever the caller set: its weights are exact for one thread count only,
# and two take about a third less time than one on the 2-core machines the demo is measured on.
PRETRAIN_THREADS = 2

TINY_IMAGE_SIZE = 48
TINY_PATCH_SIZE = 12
TINY_NUM_QUERY_TOKENS = 16
TOKENIZER_VOCAB_SIZE = 2048

# Qwen3's added tokens, in Qwen3's order, so ids keep the same relative layout as the real tokenizer.
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen3 adds these as ordinary (non-special) added tokens.
QWEN3_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


def tiny_vision_config() -> CLIPVisionConfig:
    """CLIP ViT vision tower: 48 px images in 12 px patches, a 4 × 4 patch grid (16 patches per frame)."""
    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        projection_dim=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE,
    )


def tiny_text_config(vocab_size: int, tokenizer: PreTrainedTokenizerBase | None = None) -> Qwen3Config:
    """Qwen3 causal LM with grouped-query attention, untied head as in Qwen3-8B."""
    special_ids = {}
    if tokenizer is not None:
        special_ids = {
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        }
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **special_ids,
    )


def tiny_siglip_config(vocab_size: int, pad_token_id: int, eos_token_id: int) -> SiglipConfig:
    """SigLIP dual encoder; the text side reads the Korean tokenizer, padded to 64 tokens as SigLIP expects."""
    return SiglipConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "pad_token_id": pad_token_id,
            "bos_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
        },
    )


def tokenizer_training_texts() -> list[str]:
    """The shipped Korean text plus captions drawn from the demo corpus grammar."""
    texts = [line.strip() for line in KOREAN_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    from kvcap.demo.corpus import sample_caption_texts

    return texts + sample_caption_texts(3000, seed=SEED)


def train_tokenizer(texts: list[str], vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Qwen2Tokenizer:
    """Train byte-level BPE with Qwen2's pre-tokenizer and wrap it as ``Qwen2Tokenizer`` with Qwen3's tokens."""
    from tokenizers import trainers

    # A throwaway Qwen2Tokenizer supplies the exact normaliser and pre-tokenizer Qwen uses.
    pipeline = Qwen2Tokenizer()._tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN3_SPECIAL_TOKENS) - len(QWEN3_ADDED_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=[chr(c) for c in _byte_level_alphabet()],
        special_tokens=[],
    )
    pipeline.train_from_iterator(texts, trainer=trainer)
    model_state = pipeline.model
    vocab = pipeline.get_vocab(with_added_tokens=False)
    vocab.pop("<|endoftext|>", None)
    vocab = {token: index for index, token in enumerate(sorted(vocab, key=vocab.get))}
    merges = _merges_of(model_state)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(token, special=True) for token in QWEN3_SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(token, special=False) for token in QWEN3_ADDED_TOKENS])
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _byte_level_alphabet() -> list[int]:
    from tokenizers import pre_tokenizers

    return sorted(ord(ch) for ch in pre_tokenizers.ByteLevel.alphabet())


def _merges_of(bpe_model) -> list[tuple[str, str]]:
    """Read the learned merges back out of a trained ``tokenizers`` BPE model (through its JSON form)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        files = bpe_model.save(folder)
        merges_file = next(Path(f) for f in files if f.endswith("merges.txt"))
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    json.dumps(merges)  # fail early if a merge is not serialisable text
    return merges


def load_tokenizer(path: str | Path = TOKENIZER_DIR) -> PreTrainedTokenizerBase:
    """The shipped tiny Korean tokenizer (a ``Qwen2Tokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_backbones(
    out_dir: str | Path, tokenizer_dir: str | Path = TOKENIZER_DIR, pretrain: bool = False
) -> dict[str, Path]:
    """Write ``clip-vision``, ``qwen3`` and ``siglip`` tiny checkpoints under ``out_dir``; returns their paths.

    Deterministic: the same seed gives the same weights on every run. Random weights take well under a second
    (what tests use); ``pretrain=True`` adds the short pretraining of ``kvcap/demo/pretrain.py``
    (two to five minutes at ``PRETRAIN_THREADS``, by CPU) that the demo needs.
    """
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    paths = {name: out_dir / name for name in ("clip-vision", "qwen3", "siglip")}

    _seed_everything(SEED)
    vision = CLIPVisionModel(tiny_vision_config()).eval()
    if pretrain:
        from kvcap.demo.pretrain import pretrain_vision_tower

        with torch_threads(PRETRAIN_THREADS):
            pretrain_vision_tower(vision, tokenizer, seed=SEED)
    vision.save_pretrained(paths["clip-vision"])
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    ).save_pretrained(paths["clip-vision"])

    _seed_everything(SEED + 1)
    language_model = Qwen3ForCausalLM(tiny_text_config(len(tokenizer), tokenizer)).eval()
    if pretrain:
        from kvcap.demo.pretrain import pretrain_language_model

        with torch_threads(PRETRAIN_THREADS):
            pretrain_language_model(language_model, tokenizer, seed=SEED)
    language_model.save_pretrained(paths["qwen3"])
    tokenizer.save_pretrained(paths["qwen3"])

    _seed_everything(SEED + 2)
    siglip = SiglipModel(tiny_siglip_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)).eval()
    siglip.save_pretrained(paths["siglip"])
    SiglipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(paths["siglip"])
    tokenizer.save_pretrained(paths["siglip"])
    recipe = {"version": RECIPE_VERSION, "pretrained": pretrain}
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe) + "\n", encoding="utf-8")
    return paths


def built_recipe(out_dir: str | Path) -> dict | None:
    """The recipe that built the backbones under ``out_dir`` (None for a folder without one)."""
    marker = Path(out_dir) / RECIPE_FILE
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder to write the tiny backbones into")
    parser.add_argument("--retrain-tokenizer", action="store_true", help=f"retrain and rewrite {TOKENIZER_DIR}")
    parser.add_argument("--pretrain", action="store_true", help="pretrain the vision tower and the language model")
    args = parser.parse_args()
    if not args.out and not args.retrain_tokenizer:
        parser.error("give --out DIR, --retrain-tokenizer, or both")
    if args.retrain_tokenizer:
        tokenizer = train_tokenizer(tokenizer_training_texts())
        tokenizer.save_pretrained(TOKENIZER_DIR)
        print(f"tokenizer: {len(tokenizer)} tokens -> {TOKENIZER_DIR}")
    if args.out:
        for name, path in build_tiny_backbones(args.out, pretrain=args.pretrain).items():
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()
