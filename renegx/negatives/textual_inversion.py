"""Textual-inversion (TI) negatives: community embeddings such as EasyNegative as a `(1, L, D)` negative.

A TI file holds vectors in the text encoder's *input* (token-embedding) space. It becomes a negative the way
A1111 uses it when a negative prompt names it: the vectors take the place of a placeholder token, the text
encoder runs over `[BOS, v1 … vn, EOS, pad …]`, and its output (with SDXL's pooled vector) is the negative.

Layouts read (`.pt`/`.bin` only with `torch.load(weights_only=True)`):
  a1111-pt            `{"string_to_param": {"*": (n, D)}, "name": ..., ...}` (`.pt`)
  a1111-safetensors   `{"emb_params": (n, D)}` (`.safetensors`)
  diffusers           `{token: (D,) or (n, D)}` (`learned_embeds.safetensors` / `.bin`)
  sdxl-pair           `{"clip_l": (n, 768), "clip_g": (n, 1280)}` for SDXL's two text encoders

    ti = TextualInversion.load("easynegative.safetensors")
    negative = ti.negative(backbone)   # a NegativeEmbedding, checked against the backbone's text encoders
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from renegx.errors import RenegxError, first_line
from renegx.files import atomic_path
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.format import (
    NEGATIVE_FROM_KEY,
    EmbeddingError,
    read_plain_torch_file,
    text_encoder_id,
)

A1111_KEY = "emb_params"
PAIR_KEYS = ("clip_l", "clip_g")  # SDXL: text_encoder (CLIP-L), text_encoder_2 (OpenCLIP-G)
SUFFIXES = (".safetensors", ".pt", ".bin")
PLACEHOLDER = "*"  # one token in every CLIP tokenizer; its rows are replaced by the file's vectors
TI_SUFFIX = "_ti.safetensors"  # A1111/ComfyUI layout beside a renegx negative: negative_ti.safetensors
DIFFUSERS_SUFFIX = "_learned_embeds.safetensors"  # diffusers' `{token: (n, D)}` layout (one encoder)
DIFFUSERS_TOKEN = "<renegx-negative>"


class TextualInversionError(RenegxError):
    """A TI file that cannot be read or does not fit the model; the message is one line."""


@dataclass
class TextualInversion:
    """The vectors of one TI embedding: one `(n, width)` tensor per text encoder (SDXL: `clip_l`, `clip_g`).

    name: the token or name the file gives it; layout: how the file stored it (see the module docstring).
    """

    vectors: list[torch.Tensor]
    name: str = ""
    layout: str = "a1111-safetensors"
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "textual inversion"

    def __post_init__(self) -> None:
        self.vectors = [_as_vectors(self.source, v) for v in self.vectors]
        counts = {v.shape[0] for v in self.vectors}
        if len(counts) != 1:
            shapes = " and ".join(str(tuple(v.shape)) for v in self.vectors)
            raise TextualInversionError(f"{self.source}: the SDXL pair has unequal vector counts {shapes}")

    @property
    def count(self) -> int:
        return self.vectors[0].shape[0]

    def describe(self) -> str:
        if len(self.vectors) == 2:
            widths = " + ".join(f"{key} {v.shape[1]}" for key, v in zip(PAIR_KEYS, self.vectors, strict=True))
            return f"an SDXL textual inversion ({widths} wide)"
        return f"a textual inversion of {self.count} vector(s) {self.vectors[0].shape[1]} wide"

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> TextualInversion:
        path = Path(path)
        if not path.is_file():
            raise TextualInversionError(f"textual-inversion file not found: {path}")
        if path.suffix not in SUFFIXES:
            raise TextualInversionError(
                f"expected a textual-inversion file ending in {', '.join(SUFFIXES)}, got {path}"
            )
        tensors, metadata = _read(path)
        return _from_tensors(tensors, metadata, path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the A1111 `.safetensors` layout (`emb_params`, or `clip_l`/`clip_g`) atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise TextualInversionError(
                f"expected a .safetensors path to save a textual inversion, got {path}"
            )
        keys = PAIR_KEYS if len(self.vectors) == 2 else (A1111_KEY,)
        tensors = {
            key: v.detach().to("cpu", torch.float32).contiguous()
            for key, v in zip(keys, self.vectors, strict=True)
        }
        metadata = {**self.metadata, "name": self.name, "space": "text-encoder-input"}
        with atomic_path(path) as temporary:
            save_file(tensors, temporary, metadata={k: str(v) for k, v in metadata.items()})
        return path

    def save_diffusers(self, path: str | os.PathLike, token: str = DIFFUSERS_TOKEN) -> Path:
        """Write diffusers' `learned_embeds` layout, `{token: (n, D)}`, atomically (one text encoder only:
        diffusers loads an SDXL pair's `clip_l` and `clip_g` from the A1111 file, one encoder at a time)."""
        path = Path(path)
        if len(self.vectors) != 1:
            raise TextualInversionError(f"{self.describe()} has no one-token diffusers layout; save() it")
        metadata = {**self.metadata, "name": self.name, "space": "text-encoder-input"}
        with atomic_path(path) as temporary:
            save_file(
                {token: self.vectors[0].detach().to("cpu", torch.float32).contiguous()},
                temporary,
                metadata={k: str(v) for k, v in metadata.items()},
            )
        return path

    def save_beside(self, negative_path: str | os.PathLike) -> list[Path]:
        """The files interfaces load, beside a renegx negative `NAME.safetensors`: `NAME_ti.safetensors`
        (A1111, ComfyUI, InvokeAI; SDXL's `clip_l`/`clip_g`) and, for one text encoder,
        `NAME_learned_embeds.safetensors` (diffusers' `load_textual_inversion`)."""
        negative_path = Path(negative_path)
        stem = negative_path.with_suffix("")
        paths = [self.save(f"{stem}{TI_SUFFIX}")]
        if len(self.vectors) == 1:
            paths.append(self.save_diffusers(f"{stem}{DIFFUSERS_SUFFIX}"))
        return paths

    # -- use ------------------------------------------------------------------------------------------------
    def negative(self, model) -> NegativeEmbedding:
        """The negative the model's text encoder(s) make of `[BOS, vectors, EOS]`, checked against them.

        `model`: a renegx `Backbone` (SD1.x/2.x, SDXL) or a sampler adapter (`renegx.samplers.models`).
        """
        encoders, encode, name = _text_encoders(model, self)
        problem = self._mismatch(encoders, name)
        if problem:
            base = self.metadata.get("base_model")
            hint = f"; it was made for model '{base}' (pass --model {base})" if base and base != name else ""
            raise TextualInversionError(problem + hint)
        slots = [
            (encoder.get_input_embeddings(), placeholder_id(tokenizer, self.count, self.source), vectors)
            for (tokenizer, encoder), vectors in zip(encoders, self.vectors, strict=True)
        ]
        with splice(slots):
            embeds, pooled = encode(placeholder_text(self.count))
        metadata = {
            "source_format": "textual-inversion",
            "ti_layout": self.layout,
            "ti_name": self.name,
            "ti_vectors": str(self.count),
            "text_encoder_id": text_encoder_id([encoder for _, encoder in encoders]),
            "base_model": self.metadata.get("base_model", ""),
        }
        return NegativeEmbedding(
            embeds.detach().float().cpu(),
            None if pooled is None else pooled.detach().float().cpu(),
            metadata={k: v for k, v in metadata.items() if v},
        )

    def _mismatch(self, encoders: list, name: str) -> str | None:
        """Why the vectors do not fit the model's text encoders: their number, recorded id or widths."""
        if len(encoders) != len(self.vectors):
            family = "SDXL (two text encoders)" if len(encoders) == 2 else "SD1.x/2.x (one text encoder)"
            need = "a clip_l/clip_g pair file" if len(encoders) == 2 else "a file of one vector set"
            return f"{self.source} is {self.describe()}, but model '{name}' is {family} and needs {need}"
        recorded = self.metadata.get("text_encoder_id")
        actual = text_encoder_id([encoder for _, encoder in encoders])
        if recorded and recorded != actual:
            return f"{self.source} was made for text encoder {recorded}, but model '{name}' has {actual}"
        for (_, encoder), vectors in zip(encoders, self.vectors, strict=True):
            width = encoder.get_input_embeddings().embedding_dim
            if vectors.shape[1] != width:
                return (
                    f"{self.source} holds vectors {vectors.shape[1]} wide, but the text encoder of model "
                    f"'{name}' ({text_encoder_id([encoder])}) embeds tokens {width} wide"
                )
        return None


def placeholder_id(tokenizer, count: int, source: str = "textual inversion") -> int:
    """The token the vectors replace: `count` of them must fit between BOS and EOS, one token each."""
    length = tokenizer.model_max_length
    if count > length - 2:
        raise TextualInversionError(
            f"{source} holds {count} vectors; at most {length - 2} fit in one {length}-token encoding"
        )
    ids = tokenizer(placeholder_text(count)).input_ids
    if len(ids) != count + 2 or len(set(ids[1:-1])) != 1:
        raise TextualInversionError(
            f"the tokenizer does not read {PLACEHOLDER!r} as one token, so it cannot place {source}'s vectors"
        )
    return ids[1]


def placeholder_text(count: int) -> str:
    return " ".join([PLACEHOLDER] * count)


@contextmanager
def splice(slots: list[tuple[torch.nn.Module, int, torch.Tensor]]) -> Iterator[None]:
    """While inside, each `(token embedding, placeholder id, (n, width) vectors)` slot puts the vectors, in
    order, where a sequence holds the placeholder (exactly n times); gradients flow into the vectors."""

    def hook_for(placeholder: int, vectors: torch.Tensor) -> Callable:
        def hook(module, args, output):
            hits = args[0] == placeholder
            per_row = hits.sum(1)
            if not per_row.any():
                return output
            if bool(((per_row != 0) & (per_row != len(vectors))).any()):
                raise TextualInversionError(
                    f"a sequence holds {int(per_row.max())} placeholders for {len(vectors)} vectors"
                )
            output = output.clone()
            output[hits] = vectors.to(output).repeat(int((per_row > 0).sum()), 1)
            return output

        return hook

    handles = []
    try:
        for embedding, placeholder, vectors in slots:
            handles.append(embedding.register_forward_hook(hook_for(placeholder, vectors)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def interface_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """A renegx negative's provenance as its textual-inversion files record it. A negative trained to act
    late (`negative_from`) keeps the fraction, and `drawn_by_interfaces` says that interfaces draw a textual
    inversion from the first step, so there it acts early too (docs/toyworld.md measures what that costs)."""
    recorded = {**metadata, "made_by": "renegx", "renegx_file": "the negative.safetensors beside this file"}
    if metadata.get(NEGATIVE_FROM_KEY):
        recorded["drawn_by_interfaces"] = (
            f"from the first step, not from {metadata[NEGATIVE_FROM_KEY]} of the schedule as trained; renegx "
            "samplers and the renegx ComfyUI nodes draw the late version from the renegx file"
        )
    return recorded


def token_encoders(backbone) -> list[tuple]:
    """`[(tokenizer, text encoder), ...]` of a renegx `Backbone` whose negative a textual inversion can make:
    SD1.x/2.x (one CLIP encoder) or SDXL (CLIP-L, then OpenCLIP-G)."""
    from renegx.models.sd3 import SD3Backbone

    if isinstance(backbone, SD3Backbone):
        raise TextualInversionError(
            f"textual-inversion tokens need an SD1.x/2.x or SDXL model, not '{backbone.name}' (SD3 family)"
        )
    pairs = [(backbone.tokenizer, backbone.text_encoder)]
    if hasattr(backbone, "text_encoder_2"):
        pairs.append((backbone.tokenizer_2, backbone.text_encoder_2))
    return pairs


def encode_vectors(backbone, vectors: list[torch.Tensor]) -> torch.Tensor:
    """The conditioning a `Backbone` makes of `[BOS, v1 … vn, EOS, pad …]`: `(1, L, D)`, SDXL's packed
    `(1, L + 1, D)` with the pooled row; one `(n, width)` tensor per encoder. With grad enabled the graph
    runs through the frozen encoder(s) back to the vectors."""
    pairs = token_encoders(backbone)
    count = vectors[0].shape[0]
    slots = [
        (encoder.get_input_embeddings(), placeholder_id(tokenizer, count), v)
        for (tokenizer, encoder), v in zip(pairs, vectors, strict=True)
    ]
    with splice(slots):
        return backbone.encode_text([placeholder_text(count)])


def padding_vectors(backbone, count: int) -> list[torch.Tensor]:
    """`count` copies of each encoder's padding-token embedding, `(count, width)` per encoder: where token
    vectors start. Where the padding token is EOS (SD1.x's CLIP, the toy encoder) the sequence then reads as
    the empty prompt's and encodes to exactly `E("")`."""
    if count < 1:
        raise TextualInversionError(f"token vectors: at least 1 is needed, got {count}")
    vectors = []
    for tokenizer, encoder in token_encoders(backbone):
        placeholder_id(tokenizer, count)  # the count must fit one encoding
        row = encoder.get_input_embeddings().weight[tokenizer.pad_token_id]
        vectors.append(row.detach().float().repeat(count, 1))
    return vectors


@dataclass
class Inversion:
    """Token vectors fitted to an output-space negative, and how near the encoder's output over them comes.

    vectors: `(N, width)` per encoder. row_error: `(L',)` mean squared error per row of the conditioning
    (SDXL's packed pooled row last); row 0 is the start token's, which no input token reaches. target_power:
    `(L',)` the target's mean square per row, the scale each error reads against.
    """

    vectors: list[torch.Tensor]
    row_error: torch.Tensor
    target_power: torch.Tensor

    def summary(self) -> dict[str, float]:
        """The error on the rows tokens reach, relative to the target's power there, and row 0's part of the
        whole remaining error (what cannot be reached)."""
        reached, power = self.row_error[1:], self.target_power[1:]
        total = float(self.row_error.sum())
        return {
            "reachable_rows_mse": float(reached.mean()),
            "reachable_rows_relative": float(reached.sum() / power.sum()),
            "worst_row": int(reached.argmax()) + 1,
            "worst_row_mse": float(reached.max()),
            "row0_mse": float(self.row_error[0]),
            "row0_share_of_error": float(self.row_error[0]) / total if total else 0.0,
        }


def invert_negative(
    backbone, target: torch.Tensor, count: int, steps: int = 400, lr: float = 5e-3, seed: int = 0
) -> Inversion:
    """Fit `count` token vectors per encoder so that `encode_vectors` approaches `target` (the conditioning
    `(1, L, D)`, SDXL packed) in mean squared error over rows 1 … (row 0, the start token's, depends on no
    other token under CLIP's causal mask). Adam from the padding vectors with a cosine-decayed rate."""
    torch.manual_seed(seed)
    target = target.detach().float()
    vectors = [v.clone().requires_grad_(True) for v in padding_vectors(backbone, count)]
    optimiser = torch.optim.Adam(vectors, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
    for _ in range(steps):
        loss = (encode_vectors(backbone, vectors)[:, 1:] - target[:, 1:]).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        error = (encode_vectors(backbone, vectors) - target).pow(2).mean(-1)[0]
    return Inversion([v.detach() for v in vectors], error, target.pow(2).mean(-1)[0])


def _text_encoders(model, ti: TextualInversion) -> tuple[list, Callable, str]:
    """`[(tokenizer, text encoder), ...]` of a model, a text → `(embeds (1, L, D), pooled or None)` encoder
    that bypasses any per-text cache (the vectors change what the placeholder text means), and its name."""
    from renegx.models.backbone import Backbone
    from renegx.models.sdxl import SDXLFamily

    backbone = getattr(model, "backbone", model)  # a sampler adapter over a renegx backbone
    if isinstance(backbone, Backbone):
        pairs = token_encoders(backbone)
        return pairs, lambda text: backbone.negative_parts(backbone._encode([text])), backbone.name
    pipe, spec = getattr(model, "pipe", None), getattr(model, "spec", None)
    if isinstance(spec, SDXLFamily) and pipe is not None:  # a sampler adapter over an SDXL pipeline
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]

        def encode(text: str):
            cond = model._encode([text])
            return cond.embeds, cond.pooled

        return pairs, encode, model.name
    raise TextualInversionError(
        f"{ti.source}: textual-inversion negatives need an SD1.x/2.x or SDXL model, "
        f"not '{getattr(model, 'name', type(model).__name__)}' ({getattr(spec, 'name', '?')} family)"
    )


def _read(path: Path) -> tuple[dict, dict[str, str]]:
    """The file's content (a dict) and its safetensors metadata ({} for torch files)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as reader:
                return {key: reader.get_tensor(key) for key in reader.keys()}, dict(reader.metadata() or {})
        except SafetensorError as err:
            raise TextualInversionError(f"{path} is not a safetensors file ({first_line(err)})") from None
    try:
        content = read_plain_torch_file(path)
    except EmbeddingError as err:
        raise TextualInversionError(str(err)) from None
    if not isinstance(content, dict):
        raise TextualInversionError(
            f"{path}: expected a dict of textual-inversion vectors, found a {type(content).__name__}"
        )
    return content, {}


def _from_tensors(content: dict, metadata: dict[str, str], path: Path) -> TextualInversion:
    """Recognise the layout (A1111 `.pt`, A1111 `.safetensors`, diffusers, SDXL pair) of a file's content."""
    source = str(path)
    if "string_to_param" in content:
        params = content["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            found = f"{len(params)} entries" if isinstance(params, dict) else type(params).__name__
            raise TextualInversionError(f"{path}: expected one entry in string_to_param, found {found}")
        name = content.get("name")
        name = name if isinstance(name, str) else path.stem
        return TextualInversion([next(iter(params.values()))], name, "a1111-pt", metadata, source)
    if all(key in content for key in PAIR_KEYS):
        vectors = [content[key] for key in PAIR_KEYS]
        return TextualInversion(vectors, metadata.get("name", path.stem), "sdxl-pair", metadata, source)
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if len(content) == 1 and len(tensors) == 1:
        key, vectors = next(iter(tensors.items()))
        if key == A1111_KEY:
            return TextualInversion(
                [vectors], metadata.get("name", path.stem), "a1111-safetensors", metadata, source
            )
        return TextualInversion([vectors], str(key), "diffusers", metadata, source)
    keys = ", ".join(map(str, content)) or "none"
    raise TextualInversionError(
        f"{path} is no textual-inversion layout (string_to_param; {A1111_KEY}; clip_l + clip_g; one token's "
        f"tensor); found keys: {keys}"
    )


def _as_vectors(source: str, tensor) -> torch.Tensor:
    """`(D,)` or `(n, D)` floating, finite vectors as `(n, D)` float32."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        found = f"{tensor.dtype} tensor" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TextualInversionError(f"{source}: expected floating-point vectors, found a {found}")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] < 1:
        raise TextualInversionError(
            f"{source}: expected vectors of shape (n, D) or (D,), got {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise TextualInversionError(f"{source}: the vectors hold NaN or infinite values")
    return tensor.detach().float()
