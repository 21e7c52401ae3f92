"""Negative-prompt candidates from a caption, by rules, and how any proposer's candidates are cleaned.

`RuleProposer` is the fallback of the language-model proposer and the default of the `npc` sampler: it keeps
the caption's phrases that the prompt does not mention (contradictions of colour or count first), then tops up
from a generic list of defects when asked to.
"""

from __future__ import annotations

import re

GENERIC_FALLBACKS = (
    "cgi",
    "3d render",
    "cartoon",
    "illustration",
    "digital painting",
    "text",
    "logo",
    "watermark",
    "jpeg artifacts",
    "blurry",
    "low quality",
    "overexposed",
    "underexposed",
    "harsh lighting",
)
NEGATION_WORDS = {"no", "not", "without", "never", "none", "don't", "doesn't", "isn't", "aren't", "non"}
STOPWORDS = {
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "is", "are", "it", "its", "this",
    "that", "there", "which", "some", "for", "by", "from", "as", "be", "has", "have", "image", "picture",
    "photo", "shows", "showing", "depicts", "depicting", "view", "scene",
}  # fmt: skip
NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "a": "1", "an": "1", "single": "1",
}  # fmt: skip
COLOUR_WORDS = {
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray",
    "cyan", "magenta", "violet", "golden", "silver",
}  # fmt: skip
MAX_WORDS = 6
# where a caption's clauses split: punctuation, conjunctions and spatial prepositions
CLAUSE_BREAKS = (
    r"[,.;:!?]|\b(?:and|with|while|on|in|at|under|above|below|behind|near|beside|next to|in front of)\b"
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+(?:-[a-z0-9']+)*", text.lower())


def singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def plural(word: str) -> str:
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def clean_candidates(candidates: list[str], prompt: str = "", limit: int | None = None) -> list[str]:
    """Lowercase, punctuation and negation words removed, 1–6 words, not the prompt itself, deduplicated."""
    prompt_key = " ".join(words(prompt))
    cleaned: list[str] = []
    for candidate in candidates:
        kept = [w for w in words(candidate) if w not in NEGATION_WORDS]
        phrase = " ".join(kept)
        if not kept or len(kept) > MAX_WORDS or phrase == prompt_key or phrase in cleaned:
            continue
        cleaned.append(phrase)
    return cleaned if limit is None else cleaned[:limit]


class RuleProposer:
    """Caption phrases absent from the prompt, contradictions (colour, count) first, then generic defects."""

    def __init__(self, fallbacks: tuple[str, ...] | list[str] = GENERIC_FALLBACKS):
        self.fallbacks = list(fallbacks)
        self.calls = 0

    def propose(self, prompt: str, caption: str, reason: str = "", k: int = 5) -> list[str]:
        self.calls += 1
        prompt_words = {singular(w) for w in words(prompt)}
        contradictions, others = [], []
        for clause in re.split(CLAUSE_BREAKS, caption.lower()):
            clause_words = [w for w in words(clause) if w not in STOPWORDS]
            new = [w for w in clause_words if singular(w) not in prompt_words]
            if not new or len(clause_words) > MAX_WORDS:
                continue
            phrase = " ".join(clause_words)
            contradicts = any(w in COLOUR_WORDS or w in NUMBER_WORDS or w.isdigit() for w in new)
            (contradictions if contradicts else others).append(phrase)
        candidates = clean_candidates(contradictions + others, prompt)
        for fallback in self.fallbacks:
            if len(candidates) >= k:
                break
            if fallback not in candidates and singular(fallback) not in prompt_words:
                candidates.append(fallback)
        return candidates[:k]


def quantity_terms(prompt: str) -> tuple[list[str], list[str]]:
    """The quantity tokens Q of a prompt (number words with their digits, "a"/"an" → "1") and the objects O
    after them (singular and plural); defaults: Q = one..three, 1..3, O = the prompt's content words."""
    tokens = words(prompt)
    quantities: list[str] = []
    objects: list[str] = []
    for position, token in enumerate(tokens):
        digit = NUMBER_WORDS.get(token, token if token.isdigit() else None)
        if digit is None:
            continue
        for term in (token, digit):
            if term not in ("a", "an") and term not in quantities:
                quantities.append(term)
        run = []  # the words after the quantity up to the next stopword; the last is the head noun
        for word in tokens[position + 1 :]:
            if word in STOPWORDS or word in NUMBER_WORDS:
                break
            run.append(word)
        if run:
            noun = singular(run[-1])
            for term in (noun, plural(noun)):
                if term not in objects:
                    objects.append(term)
    if not quantities:
        quantities = ["one", "two", "three", "1", "2", "3"]
    if not objects:
        objects = [t for t in tokens if t not in STOPWORDS and t not in NUMBER_WORDS] or tokens[:1]
    return quantities, objects
