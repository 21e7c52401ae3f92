"""A renegx negative as ComfyUI's CONDITIONING: strength, the null it was trained against, a late window.

CONDITIONING is a list of `[cond, options]` entries; the pack hands the sampler the entries `CLIPTextEncode`
would for the file's family (`families.py`): `cond` `(1, L, D)` float32 on the CPU, and
`options["pooled_output"]` `(1, P)` where the family has one. A negative that acts late is two entries
windowed by ComfyUI's own `start_percent` / `end_percent` (`window.py`): the null on `[0, p)`, the learned
negative on `[p, 1]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import renegx

from .errors import PackError
from .families import COMFY_ENCODERS, FINGERPRINT_KEY, ZEROS, Family, family_of, null_of, shape_of
from .window import Schedule, start_percent

STRICT = "strict_encoder"  # the nodes' input that refuses other text encoder weights

Conditioning = list[
    list[Any]
]  # ComfyUI's CONDITIONING: [[cond (B, L, D), {"pooled_output": (B, P), ...}], ...]


@dataclass(frozen=True)
class Parts:
    """The tensors of one conditioning entry: `embeds` `(1, L, D)` and `pooled` `(1, P)` or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def entry(self, **options: float) -> list[Any]:
        """`[cond, options]` as `CLIPTextEncode` makes it, with `options` (a window) added."""
        extra = {} if self.pooled is None else {"pooled_output": self.pooled}
        return [self.embeds, {**extra, **options}]

    def toward(self, other: Parts, strength: float) -> Parts:
        """`self + strength · (other − self)`, row by row and on the pooled vector alike."""
        pooled = None if self.pooled is None else torch.lerp(self.pooled, other.pooled, strength)
        return Parts(torch.lerp(self.embeds, other.embeds, strength), pooled)


def parts_of(conditioning: Conditioning, what: str) -> Parts:
    """The tensors of a conditioning of one entry with one row (what `CLIPTextEncode` gives for one text)."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else type(conditioning).__name__
        raise PackError(f"expected {what} to be one encoded text (one conditioning entry), got {count}")
    cond, options = conditioning[0]
    pooled = options.get("pooled_output")
    if cond.ndim != 3 or cond.shape[0] != 1:
        raise PackError(f"expected {what} of one row, (1, L, D), got {shape_of(cond, pooled)}")
    return Parts(cond.float().cpu(), None if pooled is None else pooled.float().cpu())


@dataclass(frozen=True)
class Encoder:
    """The workflow's text encoders as far as the pack can read them: the fingerprint of their weights
    (`renegx.token_embedding_fingerprint`), or None where they cannot be read."""

    fingerprint: str | None

    @classmethod
    def of(cls, clip: Any) -> Encoder:
        """A ComfyUI CLIP's encoders in renegx's (diffusers') order: `clip_l` or `clip_h`, `clip_g`, `t5xxl`
        of its `cond_stage_model`, each read through its `transformer.get_input_embeddings()`."""
        model = getattr(clip, "cond_stage_model", None)
        found = [getattr(model, name, None) for name in COMFY_ENCODERS]
        try:
            weights = [encoder.transformer.get_input_embeddings().weight for encoder in found if encoder]
            return cls(renegx.token_embedding_fingerprint(weights) if weights else None)
        except Exception:  # noqa: BLE001 - an encoder of another layout or a quantised format: not read
            return cls(None)

    def check(self, metadata: dict[str, str], strict: bool) -> str:
        """The line `info` gives on the weights: as trained, different (refused when `strict`), or unknown."""
        recorded = metadata.get(FINGERPRINT_KEY)
        if self.fingerprint is None:
            return "text encoder weights: the CLIP's could not be read, not compared"
        if not recorded:
            return f"text encoder weights: {self.fingerprint}; the file records none, not compared"
        warned = renegx.check_encoder_fingerprint(
            metadata, self.fingerprint, "the workflow's CLIP", "this negative", strict, PackError, STRICT
        )
        if warned:
            return f"warning: {warned}"
        if recorded != self.fingerprint:
            return f"text encoder weights: {self.fingerprint}; the file's {recorded} is not comparable"
        return f"text encoder weights: {self.fingerprint}, as trained"


@dataclass(frozen=True)
class Negative:
    """A renegx negative of one row (`renegx.NegativeEmbedding`), its tensors and its family."""

    embedding: Any
    parts: Parts
    family: Family

    @classmethod
    def of(cls, embedding: Any) -> Negative:
        """The family read from the embedding's shape; a file with an attention mask (T5) is refused."""
        if embedding.attention_mask is not None:
            raise PackError(
                f"this negative has an attention mask (shape {tuple(embedding.embeds.shape)}, a T5 model "
                "such as PixArt's): no family the ComfyUI nodes serve takes one"
            )
        pooled = None if embedding.pooled is None else embedding.pooled.float()
        parts = Parts(embedding.embeds.float(), pooled)
        return cls(embedding, parts, family_of(parts.embeds, parts.pooled))


def check_text_encoder(
    negative: Negative, empty: Parts | None, clip: Encoder | None = None, strict: bool = False
) -> list[str]:
    """Refuse a negative made for another text encoder than the workflow's, in one line naming both; return
    what was checked of the encoder's weights, as lines for `info`.

    What is known of the workflow's encoder is its output for "" (`empty`, when connected), whose shape tells
    the family, and its weights' fingerprint (`clip`, when its CLIP is connected). What is known of the
    file's is its shape and, in renegx's files, `text_encoder_id` (the encoder's architecture) and
    `text_encoder_fingerprint` (its weights). This is the one place that compares them: another
    architecture or family is refused; other weights are a warning in `info`, refused when `strict`.
    """
    metadata = negative.embedding.metadata
    recorded, expected = metadata.get("text_encoder_id"), negative.family.text_encoder_id
    if recorded and expected and recorded != expected:
        raise PackError(
            f"this negative was made for text encoder {recorded}, but {negative.family.name} models encode "
            f"with {expected}"
        )
    notes = [] if clip is None else [clip.check(metadata, strict)]
    if empty is None:
        return notes
    if empty is None:
        return
    own = negative.parts
    workflow = family_of(empty.embeds, empty.pooled, what="the empty conditioning", encoded=True)
    if workflow != negative.family:
        raise PackError(
            f"this negative is {negative.family.name}-shaped {shape_of(own.embeds, own.pooled)}, but the "
            f"workflow's text encoder gives {workflow.name}-shaped {shape_of(empty.embeds, empty.pooled)}: "
            "a negative only works with the text encoder it was trained on"
        )
    return notes


def null_parts(negative: Negative, empty: Parts | None, why_needed: str) -> tuple[Parts, str]:
    """The null the file was trained against, and a line saying which and why.

    Zeros are built here; E("") is the workflow's own encoding of the empty text (`empty`), which must have
    the file's shape.
    """
    null, why = null_of(negative.family, negative.embedding.metadata)
    own = negative.parts
    if null == ZEROS:
        zeros = Parts(
            torch.zeros_like(own.embeds), None if own.pooled is None else torch.zeros_like(own.pooled)
        )
        unused = ' (the empty input is not used: ComfyUI\'s empty text is an encoding of "")' if empty else ""
        return zeros, f"null: zeros, as this file was trained ({why}){unused}"
    if empty is None:
        raise PackError(
            f"this {negative.family.name} negative {why_needed} the empty prompt it was trained against "
            f"({why}): connect CLIPTextEncode of an empty text, from the workflow's CLIP, to the empty input"
        )
    if empty.embeds.shape != own.embeds.shape:
        raise PackError(
            f"this negative {why_needed} the empty prompt encoded as it was trained, "
            f"{shape_of(own.embeds, own.pooled)}; the empty input is {shape_of(empty.embeds, empty.pooled)}"
        )
    pooled = None if own.pooled is None else empty.pooled  # SD1.x/SD2.x: a vector their models never read
    return Parts(empty.embeds, pooled), f'null: E("") from the empty input ({why})'


def negative_conditioning(
    negative: Negative,
    strength: float,
    empty: Parts | None = None,
    schedule: Schedule | None = None,
    clip: Encoder | None = None,
    strict_encoder: bool = False,
) -> tuple[Conditioning, list[str]]:
    """The CONDITIONING to hand the sampler as its negative, and lines saying what was built.

    strength: 1 gives the learned negative, 0 the null it was trained against, between them the straight
    line from one to the other. A negative with `negative_from` > 0 needs `schedule`, the one the KSampler
    will run. `clip` and `strict_encoder`: see `check_text_encoder`.
    """
    if not 0 <= strength <= 1:
        raise PackError(f"strength must lie in [0, 1], got {strength}")
    checked = check_text_encoder(negative, empty, clip, strict_encoder)
    own = negative.parts
    notes = [f"{negative.family.name} negative {shape_of(own.embeds, own.pooled)}", *checked]
    acts_from = negative.embedding.negative_from
    late = acts_from > 0
    if strength == 1 and not late:
        return [own.entry()], notes
    needed = "acts late and needs" if late else f"at strength {strength:g} moves toward"
    null, line = null_parts(negative, empty, needed)
    notes.append(line)
    learned = null.toward(own, strength)
    if strength != 1:
        notes.append(f"strength {strength:g}: {strength:g} × learned + {1 - strength:g} × null")
    if not late:
        return [learned.entry()], notes
    if schedule is None:
        raise PackError(
            f"this negative acts from {acts_from:g} of the schedule (metadata negative_from): "
            "connect the model and set steps, sampler and scheduler as in the KSampler to place its window"
        )
    steps = schedule.num_steps
    start = negative.embedding.start_index(steps)
    if start >= steps:
        notes.append(f"acts from {acts_from:g}: on none of the {steps} steps ({schedule.label})")
        return [null.entry()], notes
    percent = start_percent(schedule, start)
    notes.append(
        f"acts from {acts_from:g}: the null on steps 0-{start - 1}, the learned negative on steps "
        f"{start}-{steps - 1} of {steps} ({schedule.label}); start_percent {percent:.6f}"
    )
    return [
        null.entry(start_percent=0.0, end_percent=percent),
        learned.entry(start_percent=percent, end_percent=1.0),
    ], notes
