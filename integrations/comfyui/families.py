"""The model families a renegx file can drive in ComfyUI, told apart by the shape of their text conditioning.

ComfyUI's `CLIPTextEncode` hands the sampler `[[cond, {"pooled_output": pooled}]]`; what the model reads of it
depends on the family (ComfyUI's `comfy/sd1_clip.py`, `comfy/sdxl_clip.py`, `comfy/text_encoders/sd3_clip.py`,
`comfy/model_base.py`):

| family | cond | pooled_output |
|---|---|---|
| SD1.x | `(1, 77, 768)`, CLIP-L with its final norm | read by no SD1.x model |
| SD2.x | `(1, 77, 1024)`, OpenCLIP-H penultimate with the final norm | read by no SD2.x model |
| SDXL | `(1, 77, 2048)`, CLIP-L ‖ CLIP-G penultimate, no final norm | `(1, 1280)`, required |
| SD3 | `(1, 77 + n, 4096)`, CLIP-L ‖ CLIP-G padded to 4096, then T5 | `(1, 2048)`, required |

These are the tensors diffusers passes as `negative_prompt_embeds` / `negative_pooled_prompt_embeds`, so a
renegx file (docs/design.md §3) is one entry of that list as it stands. SD3's T5 part is any length: diffusers
pads it to 256 (a renegx SD3 file is `(1, 333, 4096)`), ComfyUI to at least 77, and its MMDiT reads any
length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PackError

ZEROS, EMPTY = "zeros", "empty"  # a family's CFG null: zeros, or the text encoder's output for "" (E(""))
FORCE_ZEROS_KEY = "force_zeros_for_empty_prompt"  # metadata of files renegx trained on SDXL (models/sdxl.py)
FINGERPRINT_KEY = "text_encoder_fingerprint"  # metadata: the text encoder weights a file was trained against
# A ComfyUI CLIP's encoders (attributes of its cond_stage_model) in the order renegx fingerprints diffusers'
# text_encoder, text_encoder_2, text_encoder_3: SD1.x clip_l, SD2.x clip_h, SDXL clip_l + clip_g, SD3 + t5xxl.
COMFY_ENCODERS = ("clip_l", "clip_h", "clip_g", "t5xxl")

CLIP_L = "clip_text_model/h768/l12/v49408"
OPENCLIP_H = "clip_text_model/h1024/l23/v49408"  # SD2.x keeps 23 of OpenCLIP-H's 24 layers
CLIP_G = "clip_text_model/h1280/l32/v49408"


@dataclass(frozen=True)
class Family:
    """One family's text conditioning: `(1, seq_len, hidden_size)` rows and a `(1, pooled_size)` vector.

    seq_len: None where any length serves (SD3). null: the family's CFG null when a file does not record
    its own. text_encoder_id: renegx's id of the family's text encoder(s) (`text_encoder_id` in a file's
    metadata), None where renegx records none.
    """

    name: str
    hidden_size: int
    pooled_size: int | None
    seq_len: int | None
    null: str
    text_encoder_id: str | None

    def fits(self, embeds: torch.Tensor, pooled: torch.Tensor | None, encoded: bool = False) -> bool:
        """Whether `embeds` `(1, L, D)` and `pooled` `(1, P)` or None are this family's conditioning.

        encoded: the conditioning comes from ComfyUI's text encoder, which adds a pooled vector even where
        the family's models read none (SD1.x, SD2.x); such a vector is then ignored.
        """
        length_fits = self.seq_len is None or embeds.shape[1] == self.seq_len
        if encoded and self.pooled_size is None:
            pooled = None
        pooled_fits = (None if pooled is None else pooled.shape[-1]) == self.pooled_size
        return length_fits and embeds.shape[-1] == self.hidden_size and pooled_fits

    def shape(self) -> str:
        """What this family's conditioning looks like, e.g. `(1, 77, 2048) + pooled (1, 1280)`."""
        length = "77 + n" if self.seq_len is None else str(self.seq_len)
        rows = f"(1, {length}, {self.hidden_size})"
        return rows if self.pooled_size is None else f"{rows} + pooled (1, {self.pooled_size})"


FAMILIES: tuple[Family, ...] = (
    Family("SD1.x", 768, None, 77, EMPTY, CLIP_L),
    Family("SD2.x", 1024, None, 77, EMPTY, OPENCLIP_H),
    Family("SDXL", 2048, 1280, 77, ZEROS, f"{CLIP_L}+{CLIP_G}"),  # diffusers' force_zeros_for_empty_prompt
    Family("SD3", 4096, 2048, None, EMPTY, None),
)


def shape_of(embeds: torch.Tensor, pooled: torch.Tensor | None) -> str:
    """A conditioning's shape as the errors name it: `(1, 77, 768)` or `(1, 77, 2048) + pooled (1, 1280)`."""
    rows = str(tuple(embeds.shape))
    return rows if pooled is None else f"{rows} + pooled {tuple(pooled.shape)}"


def family_of(
    embeds: torch.Tensor, pooled: torch.Tensor | None, what: str = "this negative", encoded: bool = False
) -> Family:
    """The family whose conditioning `embeds` `(1, L, D)` (and `pooled` `(1, P)`) is (`encoded`: see
    `Family.fits`); a one-line error naming the shape and every family's when it fits none."""
    for family in FAMILIES:
        if family.fits(embeds, pooled, encoded):
            return family
    known = "; ".join(f"{family.name} {family.shape()}" for family in FAMILIES)
    raise PackError(
        f"{what} has shape {shape_of(embeds, pooled)}, which fits no family ComfyUI serves: {known}"
    )


def null_of(family: Family, metadata: dict[str, str]) -> tuple[str, str]:
    """The CFG null a file was trained against, `ZEROS` or `EMPTY`, and why.

    renegx records SDXL's `force_zeros_for_empty_prompt` (docs/design.md §4): true, diffusers' default, makes
    the null zeros; otherwise the null is E(""). A file that does not record it has its family's null.
    """
    recorded = metadata.get(FORCE_ZEROS_KEY)
    if recorded is not None:
        null = ZEROS if recorded.lower() == "true" else EMPTY
        return null, f"the file records {FORCE_ZEROS_KEY}={recorded}"
    return family.null, f"{family.name}'s null in diffusers"
