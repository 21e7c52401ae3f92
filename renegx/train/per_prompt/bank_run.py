"""A whole per-prompt run: shards, parts written atomically, resume, the merge into a bank, its report, and
the bank measured against its global row on fresh seeds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from renegx.evaluate.protocol import cluster_bootstrap
from renegx.files import atomic_write_json, ensure_writable_dir
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import NegativeEmbedding
from renegx.rewards import Reward
from renegx.train.per_prompt.tuner import RECORDS_KEY, RUN_KEY, PerPromptError, PerPromptTuner, PromptResult


# -- a whole run: shards, parts, resume, merge ---------------------------------------------------------------
def parts_folder(out: Path) -> Path:
    """Where finished batches of prompts wait to be merged into `out`; removed once they are."""
    return out.with_name(out.stem + ".parts")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _other_settings(path: Path) -> PerPromptError:
    return PerPromptError(
        f"{path} holds prompts tuned with other settings (another global embedding, config or per-prompt "
        "options); remove it or write the bank elsewhere"
    )


def _read_parts(folder: Path, run: str) -> dict[str, tuple[torch.Tensor, dict]]:
    """prompt → (row `(L, D)`, record) over every part of this run; a part of another run is an error."""
    done: dict[str, tuple[torch.Tensor, dict]] = {}
    for path in sorted(folder.glob("part-*.safetensors")):
        part = EmbeddingBank.load(path)
        if part.metadata.get(RUN_KEY) != run:
            raise _other_settings(folder)
        records = json.loads(part.metadata[RECORDS_KEY])
        for row, (prompt, record) in enumerate(zip(part.prompts, records, strict=True)):
            done.setdefault(prompt, (part.rows.embeds[row], record))
    return done


def _read_bank(out: Path, run: str, tuner: PerPromptTuner) -> dict[str, tuple[torch.Tensor, dict]]:
    """prompt → (row `(L, D)` as the parts hold it, record) of the bank this run already merged into `out`
    (its parts are gone then); empty when there is none. A bank of another run is an error."""
    if not out.is_file():
        return {}
    bank = EmbeddingBank.load(out)
    if bank.metadata.get("per_prompt_run") != run:
        raise _other_settings(out)
    if not report_path(out).is_file():
        return {}  # the report is written after the bank: the merge was cut short, the parts are still there
    records = json.loads(report_path(out).read_text())["per_prompt"]
    rows = tuner.backbone.negative_conditioning(bank.rows.embeds, bank.rows.pooled)
    merged_only = ("row", "occurrences")
    return {
        prompt: (rows[row], {k: v for k, v in record.items() if k not in merged_only})
        for row, (prompt, record) in enumerate(zip(bank.prompts, records, strict=True))
    }


def _read_done(out: Path, run: str, tuner: PerPromptTuner) -> dict[str, tuple[torch.Tensor, dict]]:
    """Every prompt this run has tuned: those merged into `out` and those in parts waiting to be merged."""
    return {**_read_bank(out, run, tuner), **_read_parts(parts_folder(out), run)}


def _write_part(folder: Path, run: str, rows: torch.Tensor, results: list[PromptResult]) -> Path:
    prompts = [result.prompt for result in results]
    name = hashlib.sha256(json.dumps(prompts).encode("utf-8")).hexdigest()[:16]
    metadata = {RUN_KEY: run, RECORDS_KEY: json.dumps([r.to_json() for r in results], ensure_ascii=False)}
    return EmbeddingBank(NegativeEmbedding(rows, metadata=metadata), prompts).save(
        folder / f"part-{name}.safetensors"
    )


def tune_bank(
    tuner: PerPromptTuner,
    prompts: list[str],
    global_embedding: NegativeEmbedding,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    with_fallback: bool = True,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Tune this shard's prompts (skipping those already written) and, once every prompt is, merge the bank.

    prompts: may repeat; each distinct prompt is tuned once and every occurrence maps to its row.
    shard: `(i, n)`: this process tunes distinct prompts i, i + n, i + 2n, ...
    Returns the bank path when this call wrote it, None when other shards still have prompts to tune.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise PerPromptError(f"expected a .safetensors path for the bank, got {out}")
    index, count = shard
    if not 0 <= index < count:
        raise PerPromptError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    if global_embedding.embeds.shape[0] != 1:
        raise PerPromptError("expected a global embedding of one row, got a bank")
    if isinstance(prompts, str) or not prompts:
        raise PerPromptError("expected a non-empty list of prompts")
    occurrences = Counter(prompts)
    unique = list(occurrences)
    if len(unique) < len(prompts):
        log(f"renegx: {len(prompts) - len(unique)} repeated prompt(s): each distinct prompt is tuned once")
    run = hashlib.sha256(
        json.dumps({"global": _sha256(global_embedding.embeds), **tuner.describe()}).encode("utf-8")
    ).hexdigest()

    done = _read_done(out, run, tuner)
    shard_prompts = unique[index::count]
    mine = [p for p in shard_prompts if p not in done]
    if len(mine) < len(shard_prompts):
        log(f"renegx: resuming: {len(shard_prompts) - len(mine)} prompt(s) of this shard already tuned")
    folder = ensure_writable_dir(parts_folder(out)) if mine else parts_folder(out)
    size = tuner.settings.batch_prompts
    start_rows = tuner.backbone.negative_conditioning(global_embedding.embeds, global_embedding.pooled)
    for start in range(0, len(mine), size):
        rows, results = tuner.tune(mine[start : start + size], start_rows)
        _write_part(folder, run, rows, results)
        improved = sum(result.best_step > 0 for result in results)
        log(
            f"renegx: tuned {min(start + size, len(mine))}/{len(mine)} prompts of shard {index}/{count} "
            f"({improved}/{len(results)} improved in this batch)"
        )

    done = _read_done(out, run, tuner)
    missing = [p for p in unique if p not in done]
    if missing:
        log(f"renegx: shard {index}/{count} done; {len(missing)} prompt(s) left to other shards")
        return None
    _merge(tuner, out, unique, occurrences, done, global_embedding, with_fallback, run)
    shutil.rmtree(folder, ignore_errors=True)  # the bank and its report hold every prompt now
    return out


def _merge(
    tuner: PerPromptTuner,
    out: Path,
    unique: list[str],
    occurrences: Counter,
    done: dict[str, tuple[torch.Tensor, dict]],
    global_embedding: NegativeEmbedding,
    with_fallback: bool,
    run: str,
) -> None:
    """Write the bank (rows in prompt-file order) and its report, both atomically."""
    metadata = {
        **{k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in tuner.describe().items()},
        **tuner.backbone.text_encoder_metadata(),
        "global_sha256": _sha256(global_embedding.embeds),
        "global_train_steps": global_embedding.metadata.get("train_steps", "unknown"),
        "per_prompt_run": run,
    }
    # Parts hold the rows as the backbone conditions on them (SDXL's and SD3's pooled vector packed in).
    embeds, pooled = tuner.backbone.negative_parts(torch.stack([done[p][0] for p in unique]))
    fallback = None
    if with_fallback:
        fallback = NegativeEmbedding(global_embedding.embeds.detach().cpu(), global_embedding.pooled)
    EmbeddingBank(NegativeEmbedding(embeds, pooled, metadata=metadata), unique, fallback).save(out)
    records = [{"row": row, "occurrences": occurrences[p], **done[p][1]} for row, p in enumerate(unique)]
    gains = [record["gain"] for record in records]
    summary = {
        "prompts": len(unique),
        "repeats": sum(occurrences.values()) - len(unique),
        "improved": sum(record["best_step"] > 0 for record in records),
        "mean_gain": sum(gains) / len(gains),
        "mean_best_step": sum(record["best_step"] for record in records) / len(records),
        "mean_stop_step": sum(record["stop_step"] for record in records) / len(records),
    }
    atomic_write_json(
        report_path(out),
        {"bank": out.name, "settings": tuner.describe(), "summary": summary, "per_prompt": records},
    )


# -- measuring a bank ----------------------------------------------------------------------------------------
def gain_over_global(
    tuner: PerPromptTuner,
    bank: EmbeddingBank,
    prompts: list[str],
    seeds: list[int],
    judge: Reward | None = None,
    resamples: int = 2000,
) -> dict:
    """Mean per-prompt gain of the bank's rows over its global fallback, judged on `seeds`.

    Per prompt: mean over seeds of judge(row's image) − judge(global's image), the same noise for both; the CI
    is a paired bootstrap over prompts. Use seeds outside the evaluation seeds ("fresh": true) and a judge
    other than the tuning reward to measure more than the selection itself.
    """
    if bank.fallback is None:
        raise PerPromptError("the bank has no global fallback to compare with")
    prompts = list(dict.fromkeys(prompts))
    unknown = bank.unknown(prompts)
    if unknown:
        raise PerPromptError(f"{len(unknown)} prompt(s) are not in the bank, e.g. {unknown[0]!r}")
    judged_bank, judged_global = [], []
    size = tuner.settings.batch_prompts
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        for rows, judged in ((bank.select(chunk), judged_bank), (bank.fallback, judged_global)):
            conditioning = tuner.backbone.negative_conditioning(rows.embeds, rows.pooled)
            judged.append(tuner.seed_rewards(chunk, conditioning, seeds, judge).mean(1).cpu())
    with_bank, with_global = torch.cat(judged_bank), torch.cat(judged_global)
    differences = with_bank - with_global
    estimate = cluster_bootstrap(differences.numpy(), resamples=resamples)
    return {
        "judge": (judge or tuner.reward).name,
        "seeds": list(seeds),
        "fresh": not set(seeds) & set(tuner.settings.eval_seeds),
        "prompts": len(prompts),
        "mean_bank": with_bank.mean().item(),
        "mean_global": with_global.mean().item(),
        "gain": estimate.to_json(),
        "win_rate": (differences > 0).double().mean().item(),
    }
