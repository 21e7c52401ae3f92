"""transformers-backed external models for the samplers, and the specs that choose them.

Each adapter loads from a local folder or a hub id (honouring `HF_HUB_OFFLINE`):
- `Blip2Captioner`: BLIP-2 (`Blip2ForConditionalGeneration`), greedy captions;
- `ViltOracle`: ViLT fine-tuned for VQA (`ViltForQuestionAnswering`), top-k answers from its label set;
- `QwenVLOracle`: Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`), "Answer with a single word." prompts; the
  chat prompt is built here from the tokenizer and image processor, so no video processor is needed;
- `VQAVerifier`: a yes/no judge on any oracle above, score = p(yes) / (p(yes) + p(no));
- `LMProposer`: a local causal LM asked for JSON candidates, topped up by `RuleProposer` when it fails;
- `HFTextEmbedder`: mean-pooled states of any text encoder (T5 encoder, CLIP text, BERT...).

Specs (sampler options and `--sampler-opt`): captioner "blip2:<source>" | "fixed:<caption>"; oracle
"vilt:<source>" | "qwen:<source>" | "scripted:cat,dog,..." (one answer per call, across the run); verifier
"vqa:<oracle spec>" | "scripted:0,0,1"; proposer "rules" | "lm:<source>"; text embedder "model" |
"hf:<source>" | "hash". A source
"tiny" is a random tiny model built offline; "auto" picks the model family's own (`sampler_externals`: the
tiny models for `--model tiny`, the toy world's for `toy`) and the papers' models otherwise (BLIP-2 OPT-2.7b,
ViLT-b32 VQA).
"""

from __future__ import annotations

import json
import re

import torch

from renegx.models.loading import from_pretrained, source_of
from renegx.samplers.composer import SamplerError
from renegx.samplers.doubles import FixedCaptioner, HashTextEmbedder, ScriptedOracle, ScriptedVerifier
from renegx.samplers.proposers import GENERIC_FALLBACKS, RuleProposer, clean_candidates
from renegx.samplers.protocols import Verdict

DEFAULT_CAPTIONER = "blip2:Salesforce/blip2-opt-2.7b"
DEFAULT_ORACLE = "vilt:dandelin/vilt-b32-finetuned-vqa"


def _source(source: str, kind: str) -> tuple[str, bool]:
    """`(path or hub id, local_files_only)`; "tiny" builds the tiny random model of `kind` once."""
    if source == "tiny":
        from renegx.tiny.external import tiny_folder

        return str(tiny_folder(kind)), True
    return source_of(source, SamplerError)


def _load(cls, source: tuple[str, bool], **kwargs):
    return from_pretrained(cls, source[0], error=SamplerError, source=source, **kwargs)


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def to_pil(images: torch.Tensor) -> list:
    """`(B, 3, H, W)` in [0, 1] → RGB PIL images."""
    from PIL import Image

    array = (
        (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(row) for row in array]


class Blip2Captioner:
    """Greedy BLIP-2 captions (`max_new_tokens` 50, as the DNP reproductions use)."""

    def __init__(self, source: str, device="cpu", max_new_tokens: int = 50, prompt: str | None = None):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        source = _source(source, "blip2")
        self.device, self.dtype = torch.device(device), _dtype(device)
        self.processor = _load(Blip2Processor, source)
        self.model = _load(Blip2ForConditionalGeneration, source, dtype=self.dtype).to(self.device).eval()
        self.max_new_tokens, self.prompt = max_new_tokens, prompt

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        text = None if self.prompt is None else [self.prompt] * images.shape[0]
        inputs = self.processor(images=to_pil(images), text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        captions = self.processor.batch_decode(tokens, skip_special_tokens=True)
        prefix = self.prompt or ""
        return [c[len(prefix) :].strip() if c.startswith(prefix) else c.strip() for c in captions]


class ViltOracle:
    """ViLT VQA: the `top_k` highest-scoring answers of its label vocabulary."""

    def __init__(self, source: str, device="cpu"):
        from transformers import ViltForQuestionAnswering, ViltProcessor

        source = _source(source, "vilt")
        self.device = torch.device(device)
        self.processor = _load(ViltProcessor, source)
        self.model = _load(ViltForQuestionAnswering, source).to(self.device).eval()

    @torch.no_grad()
    def _logits(self, image: torch.Tensor, question: str) -> torch.Tensor:
        inputs = self.processor(
            images=to_pil(image[:1]), text=[question], return_tensors="pt", truncation=True
        )
        return self.model(**inputs.to(self.device)).logits[0].float()

    def ask(self, image: torch.Tensor, question: str, top_k: int = 1) -> list[str]:
        logits = self._logits(image, question)
        top = logits.topk(min(top_k, logits.numel())).indices
        return [self.model.config.id2label[int(i)] for i in top]

    def yes_probability(self, image: torch.Tensor, question: str) -> float:
        label2id = self.model.config.label2id
        if "yes" not in label2id or "no" not in label2id:
            raise SamplerError("this ViLT model has no 'yes'/'no' answers; it cannot verify")
        logits = self._logits(image, question)
        pair = torch.stack([logits[label2id["yes"]], logits[label2id["no"]]])
        return float(pair.softmax(0)[0])


class QwenVLOracle:
    """Qwen2.5-VL answering in one word; the chat prompt follows Qwen's `<|im_start|>` format."""

    def __init__(self, source: str, device="cpu", max_new_tokens: int = 8):
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        source = _source(source, "qwen")
        self.device, self.dtype = torch.device(device), _dtype(device)
        self.tokenizer = _load(AutoTokenizer, source)
        self.image_processor = _load(AutoImageProcessor, source)
        self.model = (
            _load(Qwen2_5_VLForConditionalGeneration, source, dtype=self.dtype).to(self.device).eval()
        )
        self.max_new_tokens = max_new_tokens

    def _inputs(self, image: torch.Tensor, text: str) -> dict:
        vision = self.image_processor(images=to_pil(image[:1]), return_tensors="pt")
        merge = getattr(self.image_processor, "merge_size", 2)
        pads = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
        prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{'<|image_pad|>' * pads}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
        )
        tokens = self.tokenizer([prompt], return_tensors="pt")
        return {
            "input_ids": tokens.input_ids.to(self.device),
            "attention_mask": tokens.attention_mask.to(self.device),
            "pixel_values": vision["pixel_values"].to(self.device, self.dtype),
            "image_grid_thw": vision["image_grid_thw"].to(self.device),
        }

    @torch.no_grad()
    def ask(self, image: torch.Tensor, question: str, top_k: int = 1) -> list[str]:
        inputs = self._inputs(image, f"Answer with a single word.\n{question}")
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = self.tokenizer.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [answer.strip()]

    @torch.no_grad()
    def yes_probability(self, image: torch.Tensor, question: str) -> float:
        inputs = self._inputs(image, f"{question}\nAnswer yes or no.")
        logits = self.model(**inputs).logits[0, -1].float()

        def best(words: tuple[str, ...]) -> torch.Tensor:
            ids = {self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words}
            return torch.stack([logits[i] for i in ids]).max()

        pair = torch.stack([best(("yes", "Yes", " yes", " Yes")), best(("no", "No", " no", " No"))])
        return float(pair.softmax(0)[0])


class VQAVerifier:
    """A yes/no judge: asks whether the image shows the prompt (and passes the checklist)."""

    def __init__(self, oracle, threshold: float = 0.5):
        if not hasattr(oracle, "yes_probability"):
            raise SamplerError(f"{type(oracle).__name__} cannot answer yes/no with a probability")
        self.oracle, self.threshold = oracle, threshold

    def verify(self, image: torch.Tensor, prompt: str, checklist: str = "") -> Verdict:
        question = f'Does this image show "{prompt}"?' + (f" It must show: {checklist}." if checklist else "")
        probability = self.oracle.yes_probability(image, question)
        return Verdict(probability >= self.threshold, probability, f"p(yes) = {probability:.3f}")


class LMProposer:
    """A local causal LM proposes negatives as JSON; the rules fill in whatever it does not deliver."""

    INSTRUCTION = (
        "An image was generated for the prompt: {prompt}\nA description of the image: {caption}\n"
        "Problem found: {reason}\nList up to {k} short negative prompts (1-6 words each) naming things "
        "that are in the description but not asked for by the prompt; put wrong colours, counts, shapes "
        "or relations first. "
        'Reply only with JSON: {{"candidates": ["...", "..."]}}'
    )

    def __init__(
        self, source: str, device="cpu", fallback: RuleProposer | None = None, max_new_tokens: int = 96
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _source(source, "lm")
        self.device = torch.device(device)
        self.tokenizer = _load(AutoTokenizer, source)
        self.model = _load(AutoModelForCausalLM, source, dtype=_dtype(device)).to(self.device).eval()
        self.fallback = fallback or RuleProposer()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def generate(self, text: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.tokenizer([text], return_tensors="pt").to(self.device)
        tokens = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.decode(tokens[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)

    def propose(self, prompt: str, caption: str, reason: str = "", k: int = 5) -> list[str]:
        reply = self.generate(
            self.INSTRUCTION.format(prompt=prompt, caption=caption, reason=reason or "-", k=k)
        )
        candidates = clean_candidates(parse_candidates(reply), prompt, k)
        for extra in self.fallback.propose(prompt, caption, reason, k):
            if len(candidates) >= k:
                break
            if extra not in candidates:
                candidates.append(extra)
        return candidates


def parse_candidates(reply: str) -> list[str]:
    """The `"candidates"` list of the first JSON object in `reply`; [] when there is none."""
    for match in re.finditer(r"\{.*?\}", reply, flags=re.DOTALL):
        try:
            value = json.loads(match.group(0)).get("candidates", [])
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, list):
            return [str(v) for v in value]
    return []


class HFTextEmbedder:
    """Mean-pooled last hidden states of a text encoder over the real tokens (T5: its encoder only)."""

    def __init__(self, source: str, device="cpu", max_length: int = 512):
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        source = _source(source, "lm")  # "tiny": the tiny LM's decoder states
        config = _load(AutoConfig, source)
        model_class = T5EncoderModel if config.model_type in ("t5", "umt5", "mt5") else AutoModel
        self.device = torch.device(device)
        self.tokenizer = _load(AutoTokenizer, source)
        self.model = _load(model_class, source).to(self.device).eval()
        self.max_length = max_length

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0].float()
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden)
        return (hidden * mask).sum(1) / mask.sum(1)


# --- specs → objects ---------------------------------------------------------------------------------------
def _split(spec: str, what: str) -> tuple[str, str]:
    kind, _, argument = spec.partition(":")
    if not argument and kind not in ("rules", "model", "hash", "auto", "toy"):
        raise SamplerError(f"cannot read {what} spec '{spec}'; expected 'kind:source'")
    return kind, argument


def _auto(what: str, model, default: str) -> str:
    """The "auto" captioner or oracle spec: the model family's own (`sampler_externals`), else `default`."""
    spec = getattr(model, "spec", None)
    return default if spec is None else spec.sampler_externals.get(what, default)


def build_captioner(spec: str, model=None):
    if spec == "auto":
        spec = _auto("captioner", model, DEFAULT_CAPTIONER)
    kind, argument = _split(spec, "captioner")
    if kind == "toy":
        from renegx.samplers.toy_external import ToyCaptioner

        return ToyCaptioner()
    if kind == "blip2":
        return Blip2Captioner(argument, device=model.device if model is not None else "cpu")
    if kind == "fixed":
        return FixedCaptioner(argument)
    raise SamplerError(f"unknown captioner '{kind}'; known: blip2:<source>, fixed:<caption>, toy")


def build_oracle(spec: str, model=None):
    if spec == "auto":
        spec = _auto("oracle", model, DEFAULT_ORACLE)
    kind, argument = _split(spec, "oracle")
    if kind == "toy":
        from renegx.samplers.toy_external import ToyOracle

        return ToyOracle()
    device = model.device if model is not None else "cpu"
    if kind == "vilt":
        return ViltOracle(argument, device=device)
    if kind == "qwen":
        return QwenVLOracle(argument, device=device)
    if kind == "scripted":
        return ScriptedOracle([[answer.strip()] for answer in argument.split(",")])
    raise SamplerError(
        f"unknown oracle '{kind}'; known: vilt:<source>, qwen:<source>, scripted:<a,b,...>, toy"
    )


def build_verifier(spec: str, model=None):
    if spec == "auto":
        spec = "vqa:" + _auto("oracle", model, DEFAULT_ORACLE)
    kind, argument = _split(spec, "verifier")
    if kind == "vqa":
        return VQAVerifier(build_oracle(argument, model))
    if kind == "scripted":
        try:
            return ScriptedVerifier([int(flag) for flag in argument.split(",")])
        except ValueError as err:
            raise SamplerError(f"scripted verifier flags must be 0/1 integers, got '{argument}'") from err
    raise SamplerError(f"unknown verifier '{kind}'; known: vqa:<oracle spec>, scripted:<0,0,1>")


def build_proposer(spec: str, fallbacks=GENERIC_FALLBACKS, device="cpu"):
    kind, argument = _split(spec, "proposer")
    if kind == "rules":
        return RuleProposer(fallbacks)
    if kind == "lm":
        return LMProposer(argument, device=device, fallback=RuleProposer(fallbacks))
    raise SamplerError(f"unknown proposer '{kind}'; known: rules, lm:<source>")


class ModelTextEmbedder:
    """Mean-pooled states of the diffusion model's own (first) text encoder: the SD port of NPC's T5 score."""

    def __init__(self, model):
        self.model = model

    def embed(self, texts: list[str]) -> torch.Tensor:
        return self.model.text_features(texts)


def build_text_embedder(spec: str, model=None):
    kind, argument = _split(spec, "text embedder")
    if kind == "model":
        return ModelTextEmbedder(model)
    if kind == "hash":
        return HashTextEmbedder()
    if kind == "hf":
        return HFTextEmbedder(argument, device=model.device if model is not None else "cpu")
    raise SamplerError(f"unknown text embedder '{kind}'; known: model, hf:<source>, hash")
