"""What the text encoder fingerprint costs (renegx.negatives.fingerprint): seconds to fingerprint the toy and
tiny encoders, a CLIP-L-sized and a CLIP-G-sized random encoder built from their configs, and T5-XXL's token
embedding (the tensor alone: the fingerprint reads nothing else), in float32 and float16.

    python -m bench.fingerprint_cost --repeats 7 --threads 1

Prints, per encoder and dtype, the median of `--repeats` timings with a bootstrap 95% interval of the median,
and the fingerprint (the same in both dtypes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from renegx.tiny import clip_text_config


def _clip(hidden: int, layers: int, heads: int):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(hidden, layers, heads, vocab_size=49408)).eval()


def _encoders() -> dict[str, list]:
    """Name → `[token embedding weights]` of each measured encoder."""
    from renegx.models import load_backbone

    t5_xxl = torch.nn.Embedding(32128, 4096)  # T5-XXL's `shared`, the only tensor the fingerprint reads
    return {
        "toy": [load_backbone("toy").text_encoder.get_input_embeddings().weight],
        "tiny": [load_backbone("tiny").text_encoder.get_input_embeddings().weight],
        "CLIP-L (random)": [_clip(768, 12, 12).get_input_embeddings().weight],
        "CLIP-G (random)": [_clip(1280, 32, 20).get_input_embeddings().weight],
        "T5-XXL embedding (random)": [t5_xxl.weight],
    }


def bootstrap_median(samples: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the median of `samples`."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor(samples)
    picks = torch.randint(len(samples), (resamples, len(samples)), generator=generator)
    medians = values[picks].median(dim=1).values
    return float(medians.quantile(0.025)), float(medians.quantile(0.975))


def main() -> None:
    from renegx.negatives.fingerprint import token_embedding_fingerprint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        for name, weights in _encoders().items():
            elements = sum(weight.numel() for weight in weights)
            for dtype in (torch.float32, torch.float16):
                cast = [weight.to(dtype) for weight in weights]
                fingerprint = token_embedding_fingerprint(cast)  # warm-up
                seconds = []
                for _ in range(args.repeats):
                    began = time.perf_counter()
                    token_embedding_fingerprint(cast)
                    seconds.append(time.perf_counter() - began)
                low, high = bootstrap_median(seconds)
                print(
                    f"{name:27s} {elements / 1e6:7.2f} M elements {str(dtype):14s} "
                    f"median {statistics.median(seconds) * 1e3:9.2f} ms "
                    f"[95% {low * 1e3:.2f}, {high * 1e3:.2f}]  {fingerprint}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
