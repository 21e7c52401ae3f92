"""Train a ReNeg negative embedding: an alias of `renegx fit` and `renegx per-prompt`.

python train.py                                       # the embedded default (configs/train/default.yaml)
python train.py fit --config configs/train/tiny.yaml         # seconds on a CPU
python train.py fit --config configs/train/sd15_clip.yaml --trainer.devices 4   # SD1.5 on 4 GPUs (DDP)
python train.py fit --config configs/train/tiny.yaml --trainer.max_steps 3 --print_config   # resolved config
"""

import sys

from renegx.cli import DEFAULT_TRAIN_CONFIG, train_main

if __name__ == "__main__":
    sys.exit(train_main(default_config=DEFAULT_TRAIN_CONFIG))
