"""Negatives that never name what the prompt asks for.

A VQA model or a captioner shown a picture drawn for "a red circle" names the circle; put into the negative,
that word steers the sample away from the prompt itself. The samplers that turn such text into negatives
(`vlm`, `dnp`) filter the prompt's own words out by default (their `keep_prompt_words` switch keeps them).
"""

from __future__ import annotations

import re

# Prompt words that name nothing (a negative may keep them): "a cat in a hat" filters "cat" and "hat".
PROMPT_STOPWORDS = {"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "for", "by", "is"}


def without_prompt_words(text: str, prompt: str) -> str:
    """`text` (an answer, a caption) less the words of `prompt`, plural or singular, case ignored."""
    own = {_singular(word) for word in re.findall(r"[\w'-]+", prompt.lower()) if word not in PROMPT_STOPWORDS}
    return " ".join(word for word in text.split() if _singular(word.lower()) not in own)


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
