"""Generate images with a learned negative embedding: an alias of `renegx infer`.

python infer.py --negative runs/default/version_0/negative.safetensors --prompt "a cat" --out out/
python infer.py --model /models/sd15 --negative neg.safetensors --prompts p.txt --seeds 0,1 --out out/
python infer.py --help
"""

import sys

from renegx.cli import infer_main

if __name__ == "__main__":
    sys.exit(infer_main())
