"""Train a ReNeg negative embedding: an alias of `renegx fit` and `renegx per-prompt`.

python train.py                                                  # the shipped default (train/default)
python train.py fit --config train/tiny                          # seconds on a CPU
python train.py fit --config train/sd15_clip --trainer.devices 4     # SD1.5 on 4 GPUs (DDP)
python train.py fit --config train/tiny --trainer.max_steps 3 --print_config   # the resolved config
"""

import sys

from renegx.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
