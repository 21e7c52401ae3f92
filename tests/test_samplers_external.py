"""transformers-backed external models, built from tiny random configs saved to local folders (offline)."""

import pytest
import torch

from renegx.samplers import SamplerError
from renegx.samplers.adapters import SDModel
from renegx.samplers.doubles import FixedCaptioner, ScriptedOracle, ScriptedVerifier
from renegx.samplers.external import (
    Blip2Captioner,
    HFTextEmbedder,
    LMProposer,
    QwenVLOracle,
    ViltOracle,
    VQAVerifier,
    build_captioner,
    build_oracle,
    build_proposer,
    build_verifier,
    parse_candidates,
    to_pil,
)
from renegx.samplers.protocols import Captioner, NegativeProposer, TextEmbedder, Verdict, Verifier, VQAOracle
from renegx.samplers.vlm import VLMSampler
from renegx.tiny.external import (
    TINY_ANSWERS,
    save_tiny_blip2,
    save_tiny_causal_lm,
    save_tiny_qwen_vl,
    save_tiny_vilt,
)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vilt(tmp_path_factory):
    return ViltOracle(str(save_tiny_vilt(tmp_path_factory.mktemp("vilt"))))


def test_to_pil_round_trips_pixels(image):
    (picture,) = to_pil(image)
    assert picture.size == (64, 64) and picture.mode == "RGB"
    back = torch.tensor(list(picture.getdata()), dtype=torch.float32).T.reshape(1, 3, 64, 64) / 255
    assert torch.allclose(back, image, atol=1 / 255)


def test_vilt_oracle_answers_from_its_labels_and_verifies(vilt, image):
    assert isinstance(vilt, VQAOracle)
    answers = vilt.ask(image, "What pet is this?", top_k=3)
    assert len(answers) == 3 and set(answers) <= set(TINY_ANSWERS)
    assert vilt.ask(image, "What pet is this?", top_k=3) == answers  # deterministic
    verdict = VQAVerifier(vilt).verify(image, "a cat", checklist="one cat")
    assert (
        isinstance(verdict, Verdict) and 0 <= verdict.score <= 1 and verdict.correct == (verdict.score >= 0.5)
    )
    assert isinstance(VQAVerifier(vilt), Verifier)


def test_blip2_captioner_returns_one_string_per_image(tmp_path, image):
    captioner = Blip2Captioner(str(save_tiny_blip2(tmp_path)), max_new_tokens=5)
    assert isinstance(captioner, Captioner)
    captions = captioner.caption(torch.cat([image, image.flip(-1)]))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_qwen_vl_oracle_answers_and_gives_a_yes_probability(tmp_path, image):
    oracle = QwenVLOracle(str(save_tiny_qwen_vl(tmp_path)), max_new_tokens=3)
    (answer,) = oracle.ask(image, "What pet is this?")
    assert isinstance(answer, str)
    assert 0 <= oracle.yes_probability(image, "Is this a cat?") <= 1


def test_lm_proposer_falls_back_to_rules_when_the_reply_is_not_json(tmp_path):
    proposer = LMProposer(str(save_tiny_causal_lm(tmp_path)), max_new_tokens=8)
    assert isinstance(proposer, NegativeProposer)
    candidates = proposer.propose("one cat", "two red cats on a wooden table", "wrong count", k=3)
    assert candidates[0] == "two red cats" and len(candidates) == 3
    assert all(isinstance(c, str) and 1 <= len(c.split()) <= 6 for c in candidates)
    embedder = HFTextEmbedder(str(tmp_path))
    assert isinstance(embedder, TextEmbedder) and embedder.embed(["a cat", "two dogs"]).shape == (2, 32)


def test_parse_candidates():
    assert parse_candidates('Sure: {"candidates": ["two cats", "blurry"]} done') == ["two cats", "blurry"]
    assert parse_candidates('{not json} {"candidates": ["dog"]}') == ["dog"]
    assert parse_candidates("no json here") == []


def test_specs_build_doubles_and_name_what_is_wrong(tmp_path):
    assert isinstance(build_captioner("fixed:a red cube"), FixedCaptioner)
    oracle = build_oracle("scripted:cat,dog")
    assert isinstance(oracle, ScriptedOracle) and oracle.script == [["cat"], ["dog"]]
    assert isinstance(build_verifier("scripted:0,1"), ScriptedVerifier)
    assert type(build_proposer("rules")).__name__ == "RuleProposer"
    with pytest.raises(SamplerError, match="unknown oracle 'clip'"):
        build_oracle("clip:x")
    with pytest.raises(SamplerError, match="model folder not found"):
        build_oracle(f"vilt:{tmp_path}/missing")
    with pytest.raises(SamplerError, match="0/1 integers"):
        build_verifier("scripted:yes")


def test_vlm_sampler_with_a_real_vilt_oracle(tiny_backbone, vilt):
    sampler = VLMSampler(SDModel(tiny_backbone), steps=3, top_k=2, oracle=vilt)
    record = sampler.sample("a new kind of pet", 0).record
    negatives = record.details["vlm"]["negative_set"]
    assert negatives and set(negatives) <= set(TINY_ANSWERS) - {"yes", "no"}
    assert record.calls["vqa"] == 3 and record.steps[1]["base"].startswith("set:")
