"""A word-level `CLIPTokenizer` for toy captions: BPE merges trained on the toy words, byte fallback kept.

Every toy word becomes one token (a small text encoder learns words, not spellings); any other text still
tokenizes, byte by byte, as in CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

from renegx.tiny import _bytes_to_unicode
from renegx.toyworld.scene import vocabulary

MAX_LENGTH = 77


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of the toy tokenizer in `folder` (the CLIP tokenizer file layout)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = vocabulary()
    alphabet = list(_bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    bpe.train_from_iterator(words * 4, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = [" ".join(m) if isinstance(m, list) else m for m in trained["merges"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def load_tokenizer(folder: Path):
    """The tokenizer of a folder: the two files `write_tokenizer_files` writes, or a saved tokenizer."""
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file():
        return CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH
        )
    return CLIPTokenizer.from_pretrained(folder)
