"""Per-prompt negative embeddings: ReNeg's Algorithm 1 with honest early stopping, batched and sharded.

Each prompt's embedding starts from the global one and takes at most `max_steps` reward-gradient steps, each
the training step of docs/design.md on that prompt alone (fresh noise, no-grad rollout, one grad step, decode,
reward). After every step the prompt is scored on its **fixed evaluation noise**: full guided DDIM sampling
from the same `eval_seeds` every time (the images `infer.py --seeds` draws), so "better" is not luck of the
draw. The best iterate is kept, and the global embedding is step 0, so a prompt never ends below it on that
evaluation. A step that does not beat the best so far (a tie or a regression) counts toward `patience`.
The evaluation after a step and the next step's no-grad rollout start from the same rows, so they share their
UNet calls (`evaluate_and_roll`) for every prompt that this evaluation cannot stop.

Batched: row i of one `(N, L, D)` tensor is prompt i's embedding; one AdamW steps the tensor and `step_rows`
puts back the rows (value and Adam moments) of prompts that have stopped, which makes it N independent Adams.
Training noise and stop steps are drawn from the run seed per (prompt, step), so a prompt's result does not
depend on which prompts share its batch, its shard or its run.

Sharded and resumable: each finished batch of prompts is written atomically to `<out stem>.parts/`; a rerun
skips prompts already there; whichever process finds every prompt written merges the parts into the bank
`<out>` and its report `<out stem>.report.json` (rewards per step, best and stop step of every prompt).
"""

from renegx.train.per_prompt.bank_run import (
    gain_over_global,
    parts_folder,
    report_path,
    tune_bank,
)
from renegx.train.per_prompt.tuner import (
    PerPromptError,
    PerPromptSettings,
    PerPromptTuner,
    PromptResult,
    derived_seed,
    step_rows,
)

__all__ = [
    "PerPromptError",
    "PerPromptSettings",
    "PerPromptTuner",
    "PromptResult",
    "derived_seed",
    "gain_over_global",
    "parts_folder",
    "report_path",
    "step_rows",
    "tune_bank",
]
