"""How many CPU threads `renegx infer` should use: one thread against torch's default (every core).

    python -m bench.threads --repeats 5

Each repeat runs the README's `renegx infer` on the toy world (`--model toy`, "a red circle", seeds 0 and 1)
once with `--threads 1` and once with `--threads <every core>`, in alternating order, in this process (the
model load is timed with the drawing; the interpreter start is not). It prints the seconds of each and the
ratio default / one thread: its mean over repeats with a 95% bootstrap interval over repeats. Run it on the
machine in the state you care about (idle, or shared with other jobs): the answer depends on the load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np

from renegx.cli import main as renegx


def timed_infer(threads: int, steps: int) -> float:
    """Seconds of one `renegx infer` of the README's toy command with `threads` CPU threads."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["infer", "--model", "toy", "--prompt", "a red circle", "--seeds", "0,1", "--out", out]
        argv += ["--steps", str(steps), "--threads", str(threads)]
        began = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = renegx(argv)
        seconds = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"renegx infer exited with {status}")
    return seconds


def bootstrap_mean(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` `(R,)`."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (the toy world's trained 20)")
    args = parser.parse_args(argv)
    every_core = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    timed_infer(1, 1)  # imports and first-call costs out of the measurement
    one, default = [], []
    for repeat in range(args.repeats):
        order = [(1, one), (every_core, default)]
        for threads, times in order if repeat % 2 == 0 else order[::-1]:
            times.append(timed_infer(threads, args.steps))
    ratios = np.asarray(default) / np.asarray(one)
    low, high = bootstrap_mean(ratios)
    result = {
        "cores": every_core,
        "one_thread_s": [round(t, 2) for t in one],
        "every_core_s": [round(t, 2) for t in default],
        "ratio_every_core_over_one": round(float(ratios.mean()), 3),
        "ratio_ci95": [round(low, 3), round(high, 3)],
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
