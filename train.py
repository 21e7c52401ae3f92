"""Train a ReNeg negative embedding.

python train.py                                              # the embedded default (configs/default.yaml)
python train.py fit --config configs/tiny.yaml               # seconds on a CPU
python train.py fit --config configs/sd15_clip.yaml --trainer.devices 4   # SD1.5 on 4 GPUs (DDP)
python train.py fit --config configs/tiny.yaml --trainer.max_steps 3 --print_config   # resolved config
"""

import sys
from pathlib import Path

from renegx.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(default_config=Path(__file__).parent / "configs" / "default.yaml"))
