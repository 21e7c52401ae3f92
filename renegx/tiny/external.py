"""Tiny random-weight external models (ViLT, BLIP-2, Qwen2.5-VL, a causal LM), saved to local folders.

They run the transformers-backed adapters of `renegx.samplers.external` offline in seconds (tests, and the
"tiny" source of `--model tiny` demos); their answers are random words. Tokenizers are byte-level, built from
files written here, so nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from renegx.tiny import _bytes_to_unicode

TINY_ANSWERS = ("yes", "no", "cat", "dog", "bird", "red", "blue", "cube", "circle", "tree")
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_BUILT: dict[str, Path] = {}


def _byte_vocab(folder: Path, specials: tuple[str, ...] = ()) -> tuple[Path, Path]:
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    for token in specials:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def save_tiny_vilt(folder: str | Path, answers: tuple[str, ...] = TINY_ANSWERS, seed: int = 0) -> Path:
    """A 2-layer `ViltForQuestionAnswering` over `answers`, with a word-piece tokenizer and 32-px images."""
    from transformers import (
        BertTokenizer,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789?.,'\""]
    (folder / "vocab.txt").write_text("\n".join(pieces))
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=40)
    (folder / "vocab.txt").unlink()
    processor = ViltProcessor(ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32), tokenizer)
    config = ViltConfig(
        vocab_size=len(pieces),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        max_position_embeddings=40,
        max_image_length=-1,
        num_labels=len(answers),
        id2label=dict(enumerate(answers)),
        label2id={a: i for i, a in enumerate(answers)},
    )
    torch.manual_seed(seed)
    ViltForQuestionAnswering(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_blip2(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer BLIP-2 (ViT, Q-Former with 4 queries, OPT) with a byte-level tokenizer and 32-px images."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = _byte_vocab(folder, ("<pad>", "</s>", "<unk>", "<image>"))
    tokenizer = GPT2Tokenizer(
        str(vocab_file),
        str(merges_file),
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    vocab_file.unlink()
    merges_file.unlink()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.image_token = "<image>"
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer, num_query_tokens=4
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "</s>", "<image>")}
    layers = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = Blip2Config(
        vision_config={**layers, "intermediate_size": 37, "image_size": 32, "patch_size": 8},
        qformer_config={
            **layers,
            "vocab_size": len(tokenizer),
            "intermediate_size": 37,
            "encoder_hidden_size": 32,
        },
        text_config={
            **layers,
            "model_type": "opt",
            "vocab_size": len(tokenizer),
            "ffn_dim": 37,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 64,
            "bos_token_id": ids["</s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        num_query_tokens=4,
        image_token_index=ids["<image>"],
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _qwen_tokenizer(folder: Path):
    from transformers import Qwen2Tokenizer

    vocab_file, merges_file = _byte_vocab(folder)
    tokenizer = Qwen2Tokenizer(
        str(vocab_file),
        str(merges_file),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    vocab_file.unlink()
    merges_file.unlink()
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    return tokenizer


def _tiny_text_config(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def save_tiny_qwen_vl(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer `Qwen2_5_VLForConditionalGeneration` (56-px images, 4 merged patches), byte tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _qwen_tokenizer(folder)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config={
            **_tiny_text_config(tokenizer),
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_heads": 4,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(folder)
    return folder


def save_tiny_causal_lm(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer `Qwen2ForCausalLM` with a byte tokenizer (a stand-in for a local proposer LM)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _qwen_tokenizer(folder)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(**_tiny_text_config(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BUILDERS = {
    "vilt": save_tiny_vilt,
    "blip2": save_tiny_blip2,
    "qwen": save_tiny_qwen_vl,
    "lm": save_tiny_causal_lm,
}


def tiny_folder(kind: str) -> Path:
    """The folder of the tiny `kind` model ("vilt", "blip2", "qwen", "lm"), built once per process."""
    if kind not in _BUILT:
        _BUILT[kind] = BUILDERS[kind](Path(tempfile.mkdtemp(prefix=f"renegx-tiny-{kind}-")))
    return _BUILT[kind]
