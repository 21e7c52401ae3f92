"""Prompts: the public sets renegx ships (sources and licences in README.md here) and prompt files.

A prompt source is a shipped set, named by `BUILTIN_PROMPTS`, or a file:

- `.txt`   one prompt per line;
- `.json`  a list of strings, or a list of objects holding the prompt in `field`;
- `.jsonl` one string or object per line, same `field` rule;
- `.tsv`   a header row and tab-separated columns, the prompt in column `field` (PartiPrompts.tsv).

Whitespace is stripped and empty prompts are dropped. Every problem with a file is a one-line
`PromptFileError` that names the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from renegx.errors import RenegxError, did_you_mean

PROMPT_DIR = Path(__file__).parent

# name -> (file in this folder, field holding the prompt)
BUILTIN_PROMPTS: dict[str, tuple[str, str]] = {
    "imagereward-refl": ("imagereward_refl_prompts.json", "text"),
    "imagereward-benchmark": ("imagereward_benchmark_prompts.json", "prompt"),
    "parti": ("PartiPrompts.tsv", "Prompt"),
    # the toy world's prompt sets (plain captions; the held-out ones never reached its generator), read from
    # the toy world's weights folder
    "toyworld-train": ("prompts_train.json", "prompt"),
    "toyworld-heldout": ("prompts_heldout.json", "prompt"),
}

SUPPORTED_SUFFIXES = (".txt", ".json", ".jsonl", ".tsv")

# Fields tried in order when no field is given (JSON/JSONL records, TSV columns).
JSON_FIELDS = ("prompt", "text", "caption")
TSV_FIELDS = ("Prompt", "prompt", "text", "caption")


class PromptFileError(RenegxError):
    """A prompt source that cannot be read; the message is one line naming the file and the problem."""


def resolve_prompt_source(source: str | Path) -> Path:
    """Map a builtin name (see `BUILTIN_PROMPTS`) or a path of an existing file to a file path."""
    if str(source).startswith("toyworld-") and str(source) in BUILTIN_PROMPTS:
        from renegx.toyworld import weights_folder

        return weights_folder() / BUILTIN_PROMPTS[str(source)][0]
    if str(source) in BUILTIN_PROMPTS:
        return PROMPT_DIR / BUILTIN_PROMPTS[str(source)][0]
    path = Path(source).expanduser()
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise PromptFileError(
            f"prompt file {source} {problem}; "
            f"give a prompt file or a builtin name: {', '.join(BUILTIN_PROMPTS)}"
            + did_you_mean(str(source), BUILTIN_PROMPTS)
        )
    return path


def read_prompts(source: str | Path, field: str | None = None, dedupe: bool = False) -> list[str]:
    """Read the prompts of a builtin set or a file, in file order.

    Args:
        source: a builtin name (`"imagereward-refl"`, `"imagereward-benchmark"`, `"parti"`) or a file path.
        field: the JSON/JSONL key or TSV column holding the prompt. None: a builtin set's own field; for a
            file, the first present of "prompt", "text", "caption" (TSV: "Prompt" first).
        dedupe: drop exact repeats (after stripping), keeping the first occurrence.

    Returns:
        The non-empty, stripped prompts.
    """
    path = resolve_prompt_source(source)
    if field is None and str(source) in BUILTIN_PROMPTS:
        field = BUILTIN_PROMPTS[str(source)][1]
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PromptFileError(
            f"prompt file {path} has unsupported extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    # utf-8-sig: a byte-order mark (common from Windows editors) would otherwise corrupt the first prompt.
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise PromptFileError(
            f"prompt file {path} is not UTF-8 text: line {line} has byte 0x{err.object[err.start]:02x} "
            "(save it as UTF-8)"
        ) from None

    if not text.strip():
        raise PromptFileError(f"prompt file {path} has no prompts")
    if suffix == ".txt":
        raw = text.splitlines()
    elif suffix == ".json":
        raw = _json_prompts(path, text, field)
    elif suffix == ".jsonl":
        raw = _jsonl_prompts(path, text, field)
    else:
        raw = _tsv_prompts(path, text, field)

    prompts = [p.strip() for p in raw if p.strip()]
    if dedupe:
        prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise PromptFileError(f"prompt file {path} has no prompts")
    return prompts


def _record_prompt(path: Path, record: Any, field: str | None, where: str) -> str:
    """The prompt of one JSON record: the string itself, or the value of `field` in an object."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise PromptFileError(
            f"prompt file {path}: {where} is a {type(record).__name__}, expected a string or an object"
        )
    candidates = (field,) if field is not None else JSON_FIELDS
    for key in candidates:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise PromptFileError(
                    f"prompt file {path}: {where} field {key!r} is a {type(value).__name__}, "
                    "expected a string"
                )
            return value
    wanted = f"field {field!r}" if field is not None else f"any of the fields {', '.join(JSON_FIELDS)}"
    raise PromptFileError(
        f"prompt file {path}: {where} has no {wanted} (it has: {', '.join(map(str, record)) or 'no fields'})"
    )


def _json_prompts(path: Path, text: str, field: str | None) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptFileError(f"prompt file {path} is not valid JSON: {err}") from None
    if not isinstance(records, list):
        raise PromptFileError(
            f"prompt file {path}: expected a JSON list of strings or objects, got a {type(records).__name__}"
        )
    return [_record_prompt(path, record, field, f"record {i}") for i, record in enumerate(records)]


def _jsonl_prompts(path: Path, text: str, field: str | None) -> list[str]:
    prompts = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"prompt file {path}: line {lineno} is not valid JSON: {err}") from None
        prompts.append(_record_prompt(path, record, field, f"line {lineno}"))
    return prompts


def _tsv_prompts(path: Path, text: str, field: str | None) -> list[str]:
    # QUOTE_NONE: TSV has no quoting, and a Parti prompt may start with a quote ('"G I G G L E" painted ...').
    reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = reader.fieldnames or []
    candidates = (field,) if field is not None else TSV_FIELDS
    column = next((c for c in candidates if c in columns), None)
    if column is None:
        wanted = f"column {field!r}" if field is not None else f"any of the columns {', '.join(TSV_FIELDS)}"
        raise PromptFileError(
            f"prompt file {path}: header has no {wanted} (it has: {', '.join(columns) or 'no columns'})"
        )
    prompts = []
    for i, row in enumerate(reader):
        if row[column] is None:
            has = ", ".join(k for k, v in row.items() if k is not None and v is not None)
            raise PromptFileError(
                f"prompt file {path}: record {i} (line {reader.line_num}) has no column {column!r} "
                f"(it has: {has})"
            )
        prompts.append(row[column])
    return prompts
