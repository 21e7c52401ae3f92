"""The adaptive samplers with scripted external models: vlm (accumulated negatives) and npc (outer loop)."""

import pytest
import torch

from renegx.configs import path_of, shipped
from renegx.samplers import SamplerError, build_sampler
from renegx.samplers.adapters import SDModel
from renegx.samplers.cfg import CFGSampler
from renegx.samplers.config import load_sampler_config, parse_overrides
from renegx.samplers.doubles import FixedCaptioner, HashTextEmbedder, ScriptedOracle, ScriptedVerifier
from renegx.samplers.npc import NPCSampler, salient_scores
from renegx.samplers.prompt_words import without_prompt_words
from renegx.samplers.proposers import RuleProposer, clean_candidates, quantity_terms
from renegx.samplers.vlm import VLMSampler, chunk_entries, clean_answer, fit_newest

PROMPT = "one cat"
# The vlm tests ask for a pet, so that the scripted answers (cat, dog) are not the prompt's own words.
PET_PROMPT = "one pet"
CONFIGS = [path_of(name) for name in shipped("samplers")]


@pytest.fixture(scope="module")
def model(tiny_backbone):
    return SDModel(tiny_backbone)


@pytest.fixture(scope="module")
def learned(tiny_backbone):
    return torch.randn(1, 77, tiny_backbone.hidden_size, generator=torch.Generator().manual_seed(9))


def _vlm(model, script, **options):
    oracle = ScriptedOracle(script)
    return VLMSampler(model, {"steps": 4, **options}, oracle=oracle), oracle


# --- vlm ---------------------------------------------------------------------------------------------------
def test_vlm_accumulates_deduplicated_answers_one_step_late(model):
    sampler, oracle = _vlm(model, [["cat"], ["dog"], ["cat"], [""]])
    record = sampler.sample(PET_PROMPT, 0).record
    assert record.details["vlm"]["negative_set"] == ["cat", "dog"]
    assert [s["base"] for s in record.steps] == ["null", "set:cat", "set:cat, dog", "set:cat, dog"]
    assert record.calls["text_encoder"] == 2  # one re-encode per change of the set
    assert record.calls["vqa"] == oracle.calls == 4 and record.calls["vae_decode"] == 4 + 1
    assert record.nfe == 2 * 4  # no extra network call


def test_vlm_keeps_a_learned_base_and_concatenates_the_set(model, learned):
    sampler, _ = _vlm(model, [["cat"]])
    record = sampler.sample(PET_PROMPT, 0, base=learned).record
    assert [s["base"] for s in record.steps] == ["embedding"] + ["embedding + set:cat"] * 3
    extra = VLMSampler(model, steps=4, negatives_as="extra", oracle=ScriptedOracle([["cat"]]))
    record = extra.sample(PET_PROMPT, 0, base=learned).record
    assert record.steps[1]["extras"] == [{"negative": "set:cat", "weight": 6.5}] and record.nfe == 8 + 3


def test_vlm_answers_act_from_the_next_step_before_a_late_base_starts(model, learned):
    sampler, _ = _vlm(model, [["cat"]], base_window="2:4 steps")
    record = sampler.sample(PET_PROMPT, 0, base=learned).record
    assert [s["base"] for s in record.steps] == [
        "null",
        "null + set:cat",
        "embedding + set:cat",
        "embedding + set:cat",
    ]


def test_an_answer_at_the_last_step_is_never_applied(model):
    """With only the last step queried, the image equals plain CFG: a negative acts from the next step on."""
    sampler, oracle = _vlm(model, [["cat"]], query_window="3:4 steps")
    result = sampler.sample(PET_PROMPT, 5)
    assert oracle.calls == 1 and result.record.calls.get("text_encoder", 0) == 0
    assert torch.equal(result.latents, CFGSampler(model, steps=4).sample(PET_PROMPT, 5).latents)


def test_vlm_query_window_frequency_and_clearing(model):
    sampler, oracle = _vlm(model, [["cat"], ["dog"]], query_window="0:2 steps", clear_at_stop=True)
    record = sampler.sample(PET_PROMPT, 0).record
    assert oracle.calls == 2 and [q["step"] for q in record.details["vlm"]["queries"]] == [0, 1]
    assert [s["base"] for s in record.steps] == ["null", "set:cat", "set:cat, dog", "null"]
    sampler, oracle = _vlm(model, [["cat"], ["dog"]], query_every=2, questions=["What pet?", "What colour?"])
    record = sampler.sample(PET_PROMPT, 0).record
    assert [q["step"] for q in record.details["vlm"]["queries"]] == [0, 2]
    assert oracle.questions == ["What pet?", "What colour?"] * 2


def test_vlm_main_object_initial_negative_and_top_k(model):
    sampler, _ = _vlm(
        model, [["Wood.", "It is glass", "no"]], top_k=3, main_object="building", initial_negative="brick"
    )
    record = sampler.sample(PET_PROMPT, 0).record
    assert record.details["vlm"]["negative_set"] == ["brick", "wood building", "glass building"]
    assert record.steps[0]["base"] == "set:brick"


def test_vlm_never_negates_the_prompts_own_words_unless_asked(model):
    sampler, _ = _vlm(model, [["circle"], ["green circles"], ["square"]])
    record = sampler.sample("a red circle", 0).record
    assert record.details["vlm"]["negative_set"] == ["green", "square"]
    assert [q["answers"] for q in record.details["vlm"]["queries"][:2]] == [[""], ["green"]]
    sampler, _ = _vlm(model, [["circle"], ["square"]], keep_prompt_words=True)
    assert sampler.sample("a red circle", 0).record.details["vlm"]["negative_set"] == ["circle", "square"]
    assert without_prompt_words("cat in a hat", "a cat in the hats") == "in a"
    assert without_prompt_words("glass", "two glasses") == "glass"  # only an 's' plural is matched


def test_clean_answer():
    assert clean_answer("It is a Golden Retriever!") == "golden retriever"
    assert clean_answer("looks like the cat.") == "cat"
    assert [clean_answer(a) for a in ("yes", "No", "none", "", "  ")] == [""] * 5


def test_token_budget_for_77_token_encoders(model):
    def count(text):  # one token per character, plus BOS and EOS
        return len(text) + 2

    entries = ["aaaa", "bbbb", "cccc"]
    assert fit_newest(entries, count, 12) == ["bbbb", "cccc"]  # "bbbb, cccc" is 10 + 2 tokens
    assert fit_newest(["x" * 50], count, 12) == ["x" * 50]  # the newest always stays (then truncated)
    assert chunk_entries(entries, count, 12) == [["aaaa", "bbbb"], ["cccc"]]

    long_set = [f"thing number {i} with a long descriptive name" for i in range(6)]
    newest = VLMSampler(model, steps=2, oracle=ScriptedOracle([[""]]))
    cond, kept = newest._encode_set(long_set)
    assert cond.seq_len == 77 and kept == long_set[-len(kept) :] and 0 < len(kept) < len(long_set)
    assert model.count_tokens(", ".join(kept)) <= 77
    chunks = VLMSampler(model, steps=2, token_budget="chunks", oracle=ScriptedOracle([[""]]))
    cond, kept = chunks._encode_set(long_set)
    assert kept == long_set and cond.seq_len % 77 == 0 and cond.seq_len > 77


def test_repo_x0_mode_is_refused_for_ddim_models(model):
    with pytest.raises(SamplerError, match="only exists for flow models"):
        VLMSampler(model, x0_mode="repo", oracle=ScriptedOracle([[""]]))


# --- npc ---------------------------------------------------------------------------------------------------
def _npc(model, correct, scores=None, caption="two red cats on a wooden table", **options):
    verifier = ScriptedVerifier(correct, scores)
    sampler = NPCSampler(
        model,
        {"steps": 2, **options},
        verifier=verifier,
        captioner=FixedCaptioner(caption),
        text_embedder=HashTextEmbedder(),
    )
    return sampler, verifier


def test_npc_stops_when_the_first_image_is_correct(model):
    sampler, verifier = _npc(model, [1])
    record = sampler.sample(PROMPT, 0).record
    assert verifier.calls == 1 and record.nfe == 4 and "captioner" not in record.calls
    assert record.details["npc"]["stopped"] == "verified"


def test_npc_regenerates_in_rank_order_until_verified(model):
    sampler, verifier = _npc(model, [0, 0, 1, 0], [0.1, 0.2, 0.8, 0.9])
    result = sampler.sample(PROMPT, 0)
    details = result.record.details["npc"]
    ranked = [c["negative"] for c in details["candidates"]]
    assert [c["score"] for c in details["candidates"]] == sorted(
        (c["score"] for c in details["candidates"]), reverse=True
    )
    assert [a["negative"] for a in details["attempts"]] == [None, *ranked[:2]]
    assert verifier.calls == 3 and details["stopped"] == "verified" and details["chosen"] == ranked[1]
    assert result.record.nfe == 3 * 4
    assert {s["base"] for s in result.record.steps} == {f"candidate:{ranked[1]}"}


def test_npc_falls_back_to_the_best_score(model):
    sampler, verifier = _npc(model, [0], [0.3, 0.9, 0.1, 0.2], candidates=3)
    result = sampler.sample(PROMPT, 0)
    details = result.record.details["npc"]
    best = details["attempts"][1]["negative"]
    assert details["stopped"] == "best_score_fallback" and details["chosen"] == best and verifier.calls == 4
    regenerated = CFGSampler(model, steps=2).sample(PROMPT, 0, base=f"text:{best}")  # same seed and negative
    assert torch.equal(result.latents, regenerated.latents)


def test_npc_ranking_makes_no_network_call(model):
    class Spying(HashTextEmbedder):
        def embed(self, texts):
            self.nfe_seen = model.nfe
            return super().embed(texts)

    embedder = Spying()
    sampler = NPCSampler(
        model,
        steps=2,
        candidates=2,
        verifier=ScriptedVerifier([0, 1]),
        captioner=FixedCaptioner("a dog"),
        text_embedder=embedder,
    )
    nfe_before = model.nfe
    record = sampler.sample(PROMPT, 0).record
    assert record.details["npc"]["ranking_nfe"] == 0
    assert embedder.nfe_seen == nfe_before + 4  # only the first generation ran before ranking


def test_npc_window_applies_the_candidate_only_there(model, learned):
    sampler = NPCSampler(
        model,
        steps=5,
        candidates=1,
        window="0:3 steps",
        verifier=ScriptedVerifier([0, 1]),
        captioner=FixedCaptioner("a dog"),
        text_embedder=HashTextEmbedder(),
    )
    record = sampler.sample(PROMPT, 0, base=learned).record
    assert [s["base"] for s in record.steps] == ["embedding + candidate:dog"] * 3 + ["embedding"] * 2


def test_npc_with_a_learned_base_drops_the_generic_fallbacks(model, learned):
    sampler, _ = _npc(model, [0], caption="one cat", candidates=3)
    assert sampler.sample(PROMPT, 0, base=learned).record.details["npc"]["candidates"] == []
    record = sampler.sample(PROMPT, 0).record
    assert [c["negative"] for c in record.details["npc"]["candidates"]] != []


def test_candidate_cleaner_and_rule_proposer():
    cleaned = clean_candidates(
        ["No Dogs!", "not blurry", "a b c d e f g", "Watermark", "watermark", "one cat"], prompt="one cat"
    )
    assert cleaned == ["dogs", "blurry", "watermark"]
    proposer = RuleProposer(fallbacks=["cgi", "blurry"])
    candidates = proposer.propose("three laptops on a desk", "a wooden desk with two laptops, a lamp", k=4)
    assert candidates[0] == "two laptops" and "lamp" in candidates and candidates[-1] == "cgi"
    assert len(candidates) == 4


def test_quantity_terms_and_salient_scores():
    assert quantity_terms("three red laptops on a table") == (
        ["three", "3", "1"],
        ["laptop", "laptops", "table", "tables"],
    )
    assert quantity_terms("sunset over water") == (
        ["one", "two", "three", "1", "2", "3"],
        ["sunset", "over", "water"],
    )
    embedder = HashTextEmbedder()
    scores = salient_scores(embedder, "three laptops", ["two laptops", "lamp"])
    assert len(scores) == 2 and scores == salient_scores(embedder, "three laptops", ["two laptops", "lamp"])
    assert salient_scores(embedder, "three laptops", []) == []


# --- configs -----------------------------------------------------------------------------------------------
def test_overrides_keep_windows_as_text():
    assert parse_overrides(
        ["query_window=0:0.5", "window=0:3 steps", "top_k=2", 'questions=["What pet?", "Colour?"]']
    ) == {
        "query_window": "0:0.5",
        "window": "0:3 steps",
        "top_k": 2,
        "questions": ["What pet?", "Colour?"],
    }
    with pytest.raises(SamplerError, match="KEY=VALUE"):
        parse_overrides(["top_k"])


def test_there_are_sampler_configs():
    assert {c.stem for c in CONFIGS} >= {"cfg_windowed", "dnp", "answer", "vlm", "npc"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_sampler_config_starts_with_its_command_and_builds(config, model):
    assert config.read_text().splitlines()[0].startswith("# renegx infer")
    name, options = load_sampler_config(config)
    sampler = build_sampler(name, model, options)
    assert sampler.name == name
