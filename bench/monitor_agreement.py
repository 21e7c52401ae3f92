"""How well the training-time monitor predicts the held-out table, and what it costs, on the toy default.

    python -m bench.monitor_agreement      # seeds 0 and 1 at lr 0.04, seed 0 at lr 0.01: 3 runs
    python -m bench.monitor_agreement --runs 0:0.04 --steps 100

Each run is the default config (`train/default`: the monitor on 64 training prompts × 2 noises every 125
steps, the held-out table on 64 held-out prompts × 8 noises at the end) with the given training seed and
learning rate, in a process of its own on `--threads` threads. Per run and measure (both judges, the ground
truth's defective share and adherence) it sets the monitor's last reading (learned − null on training
prompts, paired 95% interval) beside the held-out table's, and their difference with an approximate 95%
interval (the two come from different prompts and noises, so independent: half-widths added in
quadrature). Over the runs: how often the two agree in sign and in which of them resolves the effect, and
Pearson's r (few runs: a description, not a test). The cost is the monitor's CPU seconds (its own
`cpu_seconds`, every reading) as a share of the run's (the child process's user + system time). Results go
to `<out>/agreement.json`; the last line is `monitor_cost_share: <mean over runs>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from renegx.evaluate.monitor import MONITOR_FILE
from renegx.evaluate.protocol import format_estimate
from renegx.files import atomic_write_json

MEASURES = ("toy-pref", "toy-independent", "defective", "adherence")
CPU_FILE = "cpu_seconds.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="0:0.04,1:0.04,0:0.01", help="seed:lr of each run, comma-separated")
    parser.add_argument("--steps", type=int, default=250, help="training steps of each run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/monitor_agreement", help="folder of the runs and the result")
    parser.add_argument("--fit-args", default="", help="more `renegx fit` arguments (e.g. smaller sizes)")
    return parser.parse_args(argv)


def run_fit(
    seed: int, lr: float, steps: int, folder: Path, threads: int, extra: str
) -> tuple[Path, float | None]:
    """One `renegx fit --config train/default` in a child process; its run folder and CPU seconds. A run
    `folder` already holds to its end (its `summary.json`) is read, not trained again, with the CPU seconds
    recorded then (None where none were)."""
    finished = sorted(folder.rglob("summary.json"))
    if finished:
        recorded = folder / CPU_FILE
        cpu = json.loads(recorded.read_text())["cpu_seconds"] if recorded.is_file() else None
        return finished[-1].parent, cpu
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = (
        f"import sys, torch; torch.set_num_threads({threads}); "
        "from renegx.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = [
        *("fit", "--config", "train/default", "--seed_everything", str(seed), "--model.lr", str(lr)),
        *("--trainer.max_steps", str(steps), "--trainer.logger.init_args.save_dir", str(folder)),
        *("--trainer.enable_progress_bar", "false"),
        *shlex.split(extra),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code, *args], check=True, env={**env, "PYTHONUNBUFFERED": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    atomic_write_json(folder / CPU_FILE, {"cpu_seconds": cpu})
    (run,) = {path.parent for path in folder.rglob(MONITOR_FILE)}
    return run, cpu


def estimates(table: dict) -> dict[str, dict]:
    """measure → the learned − null estimate (`Estimate.to_json()`) of a monitor reading or the held-out
    table (`summary.json`): both hold `judges` rows and a `ground_truth` table."""
    out = {judge: row["learned_minus_null"] for judge, row in table["judges"].items()}
    learned = table["ground_truth"]["learned"]
    out.update({m: learned[f"{m}_minus_null"] for m in ("defective", "adherence")})
    return out


def resolved_sign(estimate: dict) -> int:
    """+1 or −1 when the estimate's interval excludes zero, 0 when it does not."""
    return 1 if estimate["low"] > 0 else -1 if estimate["high"] < 0 else 0


def difference(monitor: dict, held_out: dict) -> dict:
    """monitor − held-out with an approximate 95% interval: independent estimates, half-widths (the mean of
    each interval's two sides) added in quadrature. Not a bootstrap, so no units resampled: `n` is None."""
    half = math.hypot((monitor["high"] - monitor["low"]) / 2, (held_out["high"] - held_out["low"]) / 2)
    value = monitor["value"] - held_out["value"]
    return {"value": value, "low": value - half, "high": value + half, "n": None}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    runs = []
    for spec in args.runs.split(","):
        seed, lr = spec.split(":")
        label = f"seed{seed}-lr{lr}"
        folder, cpu = run_fit(int(seed), float(lr), args.steps, out / label, args.threads, args.fit_args)
        readings = json.loads((folder / MONITOR_FILE).read_text())["readings"]
        summary = json.loads((folder / "summary.json").read_text())
        monitor, held_out = estimates(readings[-1]), estimates(summary)
        monitor_cpu = sum(r["cpu_seconds"] for r in readings)
        runs.append(
            {
                "run": label,
                "folder": str(folder),
                "final_step": readings[-1]["step"],
                "cpu_seconds": None if cpu is None else round(cpu, 1),
                "monitor_cpu_seconds": round(monitor_cpu, 1),
                "monitor_cost_share": None if cpu is None else round(monitor_cpu / cpu, 4),
                "readings": [r["step"] for r in readings],
                "monitor": monitor,
                "held_out": held_out,
                "difference": {m: difference(monitor[m], held_out[m]) for m in MEASURES},
            }
        )
    agreement = {}
    for m in MEASURES:
        signs = [(np.sign(r["monitor"][m]["value"]), np.sign(r["held_out"][m]["value"])) for r in runs]
        resolved = [(resolved_sign(r["monitor"][m]), resolved_sign(r["held_out"][m])) for r in runs]
        xs, ys = [r["monitor"][m]["value"] for r in runs], [r["held_out"][m]["value"] for r in runs]
        r_value = float(np.corrcoef(xs, ys)[0, 1]) if len(runs) > 2 and np.std(xs) and np.std(ys) else None
        agreement[m] = {
            "same_sign": int(sum(a == b for a, b in signs)),
            "same_resolved_sign": int(sum(a == b for a, b in resolved)),
            "pearson_r": r_value,
            "runs": len(runs),
        }
    result = {"steps": args.steps, "threads": args.threads, "runs": runs, "agreement": agreement}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "agreement.json", result)
    print(
        f"\n{'run':<16}{'measure':<17}{'monitor (train prompts)':>33}{'held-out':>33}"
        f"{'monitor − held-out':>33}"
    )
    for run in runs:
        for m in MEASURES:
            cells = [run["monitor"][m], run["held_out"][m], run["difference"][m]]
            print(
                f"{run['run']:<16}{m:<17}" + "".join(f"{format_estimate(estimate):>33}" for estimate in cells)
            )
    for m, row in agreement.items():
        r_text = "n/a" if row["pearson_r"] is None else f"{row['pearson_r']:+.2f}"
        print(
            f"{m}: same sign {row['same_sign']}/{row['runs']}, same resolved sign (+, −, or unresolved) "
            f"{row['same_resolved_sign']}/{row['runs']}, Pearson r {r_text}"
        )
    for run in runs:
        share = "not recorded" if run["cpu_seconds"] is None else f"{100 * run['monitor_cost_share']:.1f}%"
        print(
            f"{run['run']}: monitor {run['monitor_cpu_seconds']} of {run['cpu_seconds']} CPU-s ({share}), "
            f"readings at steps {run['readings']}"
        )
    shares = [r["monitor_cost_share"] for r in runs if r["monitor_cost_share"] is not None]
    print(f"monitor_cost_share: {np.mean(shares) if shares else float('nan'):.4f}")
    return result


if __name__ == "__main__":
    main()
