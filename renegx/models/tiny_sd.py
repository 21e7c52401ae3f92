"""`tiny`: a random-weight SD1.x built offline and seeded (`renegx.tiny`), for the mechanics and the tests.

Its samplers' "auto" captioner and oracle are the tiny random BLIP-2 and ViLT, also built offline.
"""

from __future__ import annotations

from renegx.models.registry import register
from renegx.models.sd import SDFamily


class TinyFamily(SDFamily):
    name = "tiny"
    builtin = True
    sampler_externals = {"captioner": "blip2:tiny", "oracle": "vilt:tiny"}

    def components(self, model: str, prediction_type: str | None = None) -> dict:
        from renegx.tiny import tiny_sd_components

        return tiny_sd_components(prediction_type=prediction_type or "epsilon")


TINY = register(TinyFamily())
