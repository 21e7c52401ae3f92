"""One `--negative` choice (none, null, `text:...`, `ti:<file>`, an embedding file or a bank) and how it
enters a pipeline call or a sampler; shared by `infer.py` and the evaluator."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from renegx.errors import RenegxError
from renegx.models.backbone import Backbone
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.negatives.fingerprint import check_encoder_fingerprint, text_encoder_fingerprint
from renegx.negatives.format import TENSOR_KEYS, read_safetensors_metadata

TI_PREFIX = "ti:"
DEFAULT_STEPS = 30  # what a drawing uses when neither the command nor a negative file says
DEFAULT_GUIDANCE_SCALE = 7.5


class InferenceError(RenegxError):
    pass


@dataclass
class NegativeChoice:
    """How one `--negative` choice enters a diffusers pipeline call or a sampler; one subclass per kind."""

    spec: str
    info: dict = field(default_factory=dict)

    kind = "null"  # what a sidecar records
    guided = True  # False: the image is drawn without CFG (guidance scale 1)

    def pipeline_kwargs(self, pipe, prompts: list[str], guidance_scale: float) -> dict:
        return {"guidance_scale": guidance_scale if self.guided else 1.0}

    def check_prompts(self, prompts: list[str]) -> None:
        """Fail before any image is drawn when this negative cannot serve every prompt."""

    def sampler_base(self, prompt: str):
        """The base negative a sampler gets for `prompt`: None (null), a text, an embedding or a bank row."""
        return None

    def sidecar(self, prompt: str) -> dict:
        """What a sidecar records about the negative one image used."""
        return {"spec": self.spec, "kind": self.kind, **self.info}


@dataclass
class NoNegative(NegativeChoice):
    """`none`: no guidance at all."""

    kind = "none"
    guided = False


@dataclass
class TextNegative(NegativeChoice):
    """`text:...`: a negative prompt."""

    text: str = ""
    kind = "text"

    def pipeline_kwargs(self, pipe, prompts: list[str], guidance_scale: float) -> dict:
        return {"guidance_scale": guidance_scale, "negative_prompt": [self.text] * len(prompts)}

    def sampler_base(self, prompt: str):
        return f"text:{self.text}"


@dataclass
class EmbeddingNegative(NegativeChoice):
    """An embedding file, or the embedding a `ti:` textual-inversion file makes (`kind` says which)."""

    embedding: NegativeEmbedding | None = None
    kind: str = "embedding"

    def pipeline_kwargs(self, pipe, prompts: list[str], guidance_scale: float) -> dict:
        return {"guidance_scale": guidance_scale, **self.embedding.for_pipeline(pipe, len(prompts))}

    def sampler_base(self, prompt: str):
        return self.embedding


@dataclass
class BankNegative(NegativeChoice):
    """A bank file: each prompt its own row, `bank_fallback` for prompts it does not hold."""

    bank: EmbeddingBank | None = None
    bank_fallback: str = "global"
    kind = "bank"

    def pipeline_kwargs(self, pipe, prompts: list[str], guidance_scale: float) -> dict:
        return {"guidance_scale": guidance_scale, **self.bank.for_prompts(pipe, prompts, self.bank_fallback)}

    def check_prompts(self, prompts: list[str]) -> None:
        """A prompt the bank cannot serve fails here; the prompts that get its global row are counted (every
        sidecar records the count), with a warning when that is all of them."""
        self.bank.select(prompts, self.bank_fallback)
        distinct = list(dict.fromkeys(prompts))
        fallbacks = len(self.bank.unknown(distinct))
        self.info.update(bank_run_prompts=len(distinct), bank_fallback_prompts=fallbacks)
        if fallbacks == len(distinct):
            warnings.warn(
                f"bank {self.spec} holds none of the {len(distinct)} prompt(s): every image uses its global "
                "row (--bank-fallback error refuses this)",
                UserWarning,
                stacklevel=2,
            )

    def sampler_base(self, prompt: str):
        return self.bank.select([prompt], self.bank_fallback)

    def sidecar(self, prompt: str) -> dict:
        return {**super().sidecar(prompt), "bank_row": "prompt" if prompt in self.bank else "fallback"}


def recorded_metadata(spec: str) -> dict[str, str]:
    """The metadata a negative file (a renegx embedding or bank, or a `ti:` textual-inversion file) records,
    read without loading its tensors; {} for other negatives and for files that cannot be read (loading them
    reports what is wrong)."""
    return read_safetensors_metadata(spec.removeprefix(TI_PREFIX))


def drawn_as_recorded(specs: list[str], steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
    """`steps` and `guidance_scale` where given, else what the first negative file among `specs` records (the
    setting it was trained and judged at), else `DEFAULT_STEPS` and `DEFAULT_GUIDANCE_SCALE`."""
    recorded = next((m for m in map(recorded_metadata, specs) if "num_inference_steps" in m), {})
    if steps is None:
        steps = int(recorded.get("num_inference_steps", DEFAULT_STEPS))
    if guidance_scale is None:
        guidance_scale = float(recorded.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
    return steps, guidance_scale


def check_negative_file(spec: str) -> None:
    """What a `--negative` needs no model to check, before one loads: its file exists and is a file (a folder
    names the negative file inside it when there is one), and a renegx file is not given as `ti:`."""
    if spec in ("none", "null") or spec.startswith("text:"):
        return
    path = Path(spec.removeprefix(TI_PREFIX))
    if path.is_dir():
        inside = sorted(path.glob("*.safetensors"))
        hint = f" (did you mean {inside[0]}?)" if len(inside) == 1 else ""
        if (path / "negative.safetensors").is_file():
            hint = f" (did you mean {path / 'negative.safetensors'}?)"
        raise InferenceError(f"--negative {spec} is a folder, not a negative file{hint}")
    if not path.is_file():
        what = "textual-inversion" if spec.startswith(TI_PREFIX) else "embedding"
        raise EmbeddingError(f"{what} file not found: {path}")
    if spec.startswith(TI_PREFIX) and recorded_metadata(spec).get("format") == "renegx.negative-embedding":
        raise InferenceError(
            f"{path} is a renegx negative embedding, not a textual inversion: drop 'ti:' (--negative {path})"
        )


def resolve_negative(
    spec: str, backbone: Backbone, bank_fallback: str = "global", strict_encoder: bool = False
) -> NegativeChoice:
    """Parse `--negative`; an embedding file is loaded and checked against the backbone's (or a sampling
    model's) text encoder: D and L, and the weights' fingerprint it records (another one: a warning, or an
    error with `strict_encoder`)."""
    if spec == "none":
        return NoNegative(spec)
    if spec == "null":
        return NegativeChoice(spec)
    if spec.startswith("text:"):
        text = spec[len("text:") :]
        if not text.strip():
            raise InferenceError("--negative text: needs words after 'text:'")
        return TextNegative(spec, text=text)
    if spec.startswith(TI_PREFIX):
        return _textual_inversion(spec, backbone)
    sizes = {"hidden_size": backbone.hidden_size, "seq_len": backbone.sequence_length}
    is_bank = EmbeddingBank.is_bank_file(spec)  # its rows go to prompts by their text: read as a bank only
    try:
        embedding = (EmbeddingBank if is_bank else NegativeEmbedding).load(spec, **sizes)
    except EmbeddingError as err:
        if _is_textual_inversion(spec):
            raise InferenceError(f"{err} ({spec} is a textual inversion: use ti:{spec})") from None
        raise
    fingerprint = text_encoder_fingerprint(backbone.text_encoders)
    check_encoder_fingerprint(
        embedding.metadata, fingerprint, f"'{backbone.name}'", spec, strict_encoder, error=InferenceError
    )
    if not is_bank and embedding.kind == "bank":
        EmbeddingBank.load(spec, **sizes)  # rows without prompts to map them to: it says so
    if is_bank:
        info = {
            "path": str(Path(spec).resolve()),
            "bank_prompts": len(embedding),
            "bank_fallback": bank_fallback,
            "metadata": dict(sorted(embedding.metadata.items())),
        }
        return BankNegative(spec, info, bank=embedding, bank_fallback=bank_fallback)
    info = {"path": str(Path(spec).resolve()), "metadata": dict(sorted(embedding.metadata.items()))}
    return EmbeddingNegative(spec, info, embedding=embedding)


def _textual_inversion(spec: str, backbone: Backbone) -> NegativeChoice:
    """`ti:FILE`: the model's text encoder run over the file's vectors in place of a placeholder token."""
    from renegx.negatives.textual_inversion import TextualInversion

    path = spec[len(TI_PREFIX) :]
    if not path.strip():
        raise InferenceError("--negative ti: needs a textual-inversion file after 'ti:'")
    inversion = TextualInversion.load(path)
    embedding = inversion.negative(backbone)
    info = {
        "path": str(Path(path).resolve()),
        "layout": inversion.layout,
        "name": inversion.name,
        "vectors": inversion.count,
        "metadata": dict(sorted(inversion.metadata.items())),
    }
    return EmbeddingNegative(spec, info, embedding=embedding, kind="ti")


def _is_textual_inversion(path: str) -> bool:
    from renegx.negatives.textual_inversion import TextualInversion, TextualInversionError

    try:
        inversion = TextualInversion.load(path)
    except TextualInversionError:
        return False
    # One tensor under a renegx key (a negative embedding saved without its batch dimension) reads as a
    # diffusers inversion of that name, but is none.
    return inversion.name not in TENSOR_KEYS
