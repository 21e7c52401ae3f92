"""Prompt sources and the PromptDataModule (CPU, offline, small files)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
from assertions import assert_one_line_error
from builders import quiet_trainer

from renegx.prompts import BUILTIN_PROMPTS, PROMPT_DIR, PromptFileError, read_prompts, resolve_prompt_source
from renegx.train.data import PromptDataModule, PromptDataset, collate_prompts, split_prompts

PROMPTS = ["a red cube", "a blue sphere", "a green cone"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- formats


def test_txt_strips_and_drops_empty_lines(tmp_path):
    path = write(tmp_path / "p.txt", "  a red cube \n\n\t\na blue sphere\r\na green cone\n   \n")
    assert read_prompts(path) == PROMPTS
    assert read_prompts(str(path)) == PROMPTS


def test_json_list_of_strings(tmp_path):
    path = write(tmp_path / "p.json", json.dumps(PROMPTS + ["  ", ""]))
    assert read_prompts(path) == PROMPTS


@pytest.mark.parametrize("key", ["prompt", "text", "caption"])
def test_json_objects_default_field(tmp_path, key):
    path = write(tmp_path / "p.json", json.dumps([{key: p, "id": i} for i, p in enumerate(PROMPTS)]))
    assert read_prompts(path) == PROMPTS


def test_json_default_field_order_and_explicit_field(tmp_path):
    records = [{"text": f"text {i}", "prompt": f"prompt {i}", "other": f"other {i}"} for i in range(2)]
    path = write(tmp_path / "p.json", json.dumps(records))
    assert read_prompts(path) == ["prompt 0", "prompt 1"]
    assert read_prompts(path, field="other") == ["other 0", "other 1"]


def test_jsonl_objects_and_strings(tmp_path):
    lines = [
        json.dumps({"prompt": PROMPTS[0]}),
        "",
        json.dumps(PROMPTS[1]),
        json.dumps({"caption": PROMPTS[2]}),
    ]
    path = write(tmp_path / "p.jsonl", "\n".join(lines) + "\n")
    assert read_prompts(path) == PROMPTS


def test_tsv_with_quotes_and_custom_column(tmp_path):
    text = 'Prompt\tCaption\n"GIGGLE" painted on a wall\tx\na "quoted" word\ty\n\t\n'
    path = write(tmp_path / "p.tsv", text)
    assert read_prompts(path) == ['"GIGGLE" painted on a wall', 'a "quoted" word']
    assert read_prompts(path, field="Caption") == ["x", "y"]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_bytes("Prompt\tNote\ncafé\t\n".encode("utf-8-sig"))
    assert read_prompts(path) == ["café"]


def test_dedupe_keeps_first_occurrence_order(tmp_path):
    path = write(tmp_path / "p.txt", "b\na\nb\n c \na\nc\n")
    assert read_prompts(path) == ["b", "a", "b", "c", "a", "c"]
    assert read_prompts(path, dedupe=True) == ["b", "a", "c"]


# ---------------------------------------------------------------- shipped files


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("imagereward-refl", 10_000, "brittle, abstract emotion, no faces."),
        ("imagereward-benchmark", 100, "a concept art of a vehicle, cyberpunk"),
        ("parti", 1_632, "bond"),
    ],
)
def test_builtin_prompt_sets(name, count, first):
    prompts = read_prompts(name)
    assert len(prompts) == count
    assert prompts[0].startswith(first)
    assert all(p == p.strip() and p for p in prompts)


def test_builtin_refl_has_repeats_and_dedupe_removes_them():
    assert len(read_prompts("imagereward-refl", dedupe=True)) == 9_798


def test_parti_keeps_leading_quote():
    assert any(p.startswith('"G I G G L E" painted') for p in read_prompts("parti"))


def test_shipped_files_and_licences_present():
    for name in BUILTIN_PROMPTS:
        assert resolve_prompt_source(name).is_file(), name
    assert resolve_prompt_source("toyworld-heldout").parent.name == "weights"
    for extra in ("LICENSE.imagereward", "LICENSE.parti", "README.md"):
        assert (PROMPT_DIR / extra).is_file()
    assert resolve_prompt_source("parti") == PROMPT_DIR / "PartiPrompts.tsv"


# ---------------------------------------------------------------- errors


def test_missing_file_lists_builtins(tmp_path):
    assert_one_line_error(
        PromptFileError,
        lambda: read_prompts(tmp_path / "nope.txt"),
        "nope.txt",
        "does not exist",
        "imagereward-refl",
        "parti",
    )


def test_directory_is_not_a_prompt_file(tmp_path):
    assert_one_line_error(PromptFileError, lambda: resolve_prompt_source(str(tmp_path)), "is a directory")


def test_unsupported_extension(tmp_path):
    path = write(tmp_path / "p.csv", "Prompt\na\n")
    assert_one_line_error(
        PromptFileError,
        lambda: read_prompts(path),
        "p.csv",
        "unsupported extension '.csv'",
        ".txt, .json, .jsonl, .tsv",
    )


def test_json_record_without_field(tmp_path):
    path = write(tmp_path / "p.json", json.dumps([{"prompt": "a"}, {"id": 1, "url": "x"}]))
    assert_one_line_error(
        PromptFileError,
        lambda: read_prompts(path),
        "p.json",
        "record 1",
        "prompt, text, caption",
        "it has: id, url",
    )
    assert_one_line_error(
        PromptFileError, lambda: read_prompts(path, field="text"), "record 0", "'text'", "it has: prompt"
    )


def test_jsonl_record_without_field_names_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n\n{"title": "b"}\n')
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), "p.jsonl", "line 3", "it has: title")


def test_json_bad_record_types(tmp_path):
    path = write(tmp_path / "p.json", json.dumps(["a", 3]))
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), "record 1 is a int")
    path = write(tmp_path / "q.json", json.dumps([{"prompt": None}]))
    assert_one_line_error(
        PromptFileError, lambda: read_prompts(path), "record 0 field 'prompt' is a NoneType"
    )
    path = write(tmp_path / "r.json", json.dumps({"prompts": ["a"]}))
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), "expected a JSON list", "got a dict")


def test_tsv_missing_column(tmp_path):
    path = write(tmp_path / "p.tsv", "Category\tNote\nAnimals\tx\n")
    assert_one_line_error(
        PromptFileError, lambda: read_prompts(path), "p.tsv", "header has no", "it has: Category, Note"
    )
    path = write(tmp_path / "q.tsv", "Id\tPrompt\n1\ta cat\n2\n")
    assert_one_line_error(
        PromptFileError,
        lambda: read_prompts(path),
        "q.tsv",
        "record 1 (line 3)",
        "no column 'Prompt'",
        "it has: Id",
    )


def test_malformed_json(tmp_path):
    path = write(tmp_path / "p.json", '[\n  "a",\n  "b"\n  "c"\n]')
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), "p.json", "not valid JSON", "line 4")


def test_malformed_jsonl_names_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n')
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), "p.jsonl", "line 2 is not valid JSON")


@pytest.mark.parametrize(
    ("name", "text"),
    [("p.txt", "\n  \n"), ("p.json", '["", "  "]'), ("p.tsv", "Prompt\n\n"), ("p.jsonl", "")],
)
def test_no_prompts(tmp_path, name, text):
    path = write(tmp_path / name, text)
    assert_one_line_error(PromptFileError, lambda: read_prompts(path), f"prompt file {path} has no prompts")


# ---------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_ordered():
    prompts = [f"p{i}" for i in range(50)]
    train, val = split_prompts(prompts, 8, seed=3)
    assert (train, val) == split_prompts(prompts, 8, seed=3)
    assert len(val) == 8 and len(train) == 42
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(prompts)
    assert train == sorted(train, key=prompts.index) and val == sorted(val, key=prompts.index)
    assert split_prompts(prompts, 8, seed=4)[1] != val


def test_split_fraction_and_zero():
    prompts = [f"p{i}" for i in range(10)]
    assert len(split_prompts(prompts, 0.25, seed=0)[1]) == 2  # round(2.5) == 2
    assert len(split_prompts(prompts, 0.01, seed=0)[1]) == 1  # never empty when asked for
    assert split_prompts(prompts, 0, seed=0) == (prompts, [])
    assert split_prompts(prompts, 0.0, seed=0) == (prompts, [])


@pytest.mark.parametrize("val_size", [10, 11, -1, 1.0, 1.5, -0.1, True, "2"])
def test_split_rejects_bad_sizes(val_size):
    with pytest.raises(ValueError, match="val_size"):
        split_prompts([f"p{i}" for i in range(10)], val_size, seed=0)


# ---------------------------------------------------------------- dataset and datamodule


def test_dataset_and_collate():
    dataset = PromptDataset(PROMPTS)
    assert len(dataset) == 3 and dataset[1] == {"prompt": "a blue sphere", "index": 1}
    batch = collate_prompts([dataset[2], dataset[0]])
    assert batch["prompts"] == ["a green cone", "a red cube"]
    assert batch["indices"].dtype == torch.long and batch["indices"].tolist() == [2, 0]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    return write(tmp_path / "p.txt", "\n".join(f"prompt {i}" for i in range(23)))


def test_datamodule_train_batches(prompt_file):
    dm = PromptDataModule(str(prompt_file), val_size=5, batch_size=4, seed=1)
    dm.setup("fit")
    assert len(dm.train_dataset) == 18 and len(dm.val_dataset) == 5
    epoch = list(dm.train_dataloader())
    assert [len(b["prompts"]) for b in epoch] == [4, 4, 4, 4, 2]  # drop_last=False
    for batch in epoch:
        assert isinstance(batch["prompts"], list) and all(isinstance(p, str) for p in batch["prompts"])
        assert batch["indices"].dtype == torch.long and batch["indices"].shape == (len(batch["prompts"]),)
        assert batch["prompts"] == [dm.train_dataset.prompts[i] for i in batch["indices"].tolist()]
    seen = torch.cat([b["indices"] for b in epoch]).tolist()
    assert sorted(seen) == list(range(18)) and seen != list(range(18))  # shuffled, every prompt once


def test_datamodule_order_is_reproducible(prompt_file):
    def train_order(seed: int) -> list[list[str]]:
        dm = PromptDataModule(str(prompt_file), val_size=5, batch_size=4, seed=seed)
        dm.setup()
        return [b["prompts"] for b in dm.train_dataloader()]

    assert train_order(0) == train_order(0)
    assert train_order(0) != train_order(1)


def test_datamodule_val_order_is_fixed(prompt_file):
    dm = PromptDataModule(str(prompt_file), val_size=5, batch_size=4, val_batch_size=2, seed=0)
    dm.setup()
    first = list(dm.val_dataloader())
    assert [len(b["prompts"]) for b in first] == [2, 2, 1]
    assert torch.cat([b["indices"] for b in first]).tolist() == [0, 1, 2, 3, 4]
    assert [b["prompts"] for b in first] == [b["prompts"] for b in dm.val_dataloader()]


def test_datamodule_separate_val_prompts(prompt_file, tmp_path):
    val_file = write(tmp_path / "val.json", json.dumps([{"prompt": "a"}, {"prompt": "a"}, {"prompt": "b"}]))
    dm = PromptDataModule(str(prompt_file), val_prompts=str(val_file), dedupe=True, batch_size=8)
    dm.setup()
    assert len(dm.train_dataset) == 23
    assert dm.val_dataset.prompts == ["a", "b"]
    assert [b["prompts"] for b in dm.val_dataloader()] == [["a", "b"]]


def test_datamodule_builtin_sources_and_hparams():
    dm = PromptDataModule("imagereward-benchmark", val_prompts="parti", batch_size=16, seed=7)
    dm.setup()
    assert len(dm.train_dataset) == 100 and len(dm.val_dataset) == 1_632
    assert dm.hparams.prompts == "imagereward-benchmark" and dm.hparams.seed == 7
    assert dm.hparams.val_batch_size is None


def test_datamodule_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        PromptDataModule(batch_size=0)
    with pytest.raises(RuntimeError, match="setup"):
        PromptDataModule().train_dataloader()
    with pytest.raises(PromptFileError, match="does not exist"):
        PromptDataModule(str(tmp_path / "missing.txt")).setup()


class _CountPrompts(lightning.LightningModule):
    """Records the prompts Lightning hands to the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_prompts: list[str] = []
        self.val_prompts: list[str] = []

    def training_step(self, batch, batch_idx):
        self.train_prompts += batch["prompts"]
        return (self.weight * len(batch["prompts"])).sum()

    def validation_step(self, batch, batch_idx):
        self.val_prompts += batch["prompts"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_in_a_trainer(prompt_file, tmp_path):
    dm = PromptDataModule(str(prompt_file), val_size=3, batch_size=5)
    module = _CountPrompts()
    trainer = quiet_trainer(
        max_epochs=1,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert sorted(module.train_prompts) == sorted(dm.train_dataset.prompts)
    assert module.val_prompts == dm.val_dataset.prompts
