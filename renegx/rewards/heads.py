"""The linear MLP head shared by ImageReward and the LAION aesthetic predictor.

Both upstream heads are `layers = Sequential(Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear,
Linear)` (768→1024→128→64→16→1, no activations), so their state dicts (`layers.0.weight`, …,
`layers.7.bias`) load into `LinearHead` unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

REAL_WIDTHS = (1024, 128, 64, 16)
TINY_WIDTHS = (24, 16, 8, 4)


class LinearHead(nn.Module):
    """`(B, input_size)` features → `(B, 1)` scores through four hidden widths, no non-linearity."""

    def __init__(self, input_size: int, widths: tuple[int, int, int, int] = REAL_WIDTHS):
        super().__init__()
        first, second, third, fourth = widths
        self.layers = nn.Sequential(
            nn.Linear(input_size, first),
            nn.Dropout(0.2),
            nn.Linear(first, second),
            nn.Dropout(0.2),
            nn.Linear(second, third),
            nn.Dropout(0.1),
            nn.Linear(third, fourth),
            nn.Linear(fourth, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)

    @staticmethod
    def widths_of(state_dict: dict[str, Tensor], prefix: str = "layers.") -> tuple[int, tuple[int, ...]]:
        """(input size, hidden widths) read off a head state dict, so tiny and real heads both load."""
        weights = [state_dict.get(f"{prefix}{i}.weight") for i in (0, 2, 4, 6)]
        if any(w is None or w.ndim != 2 for w in weights):
            return 0, ()
        return int(weights[0].shape[1]), tuple(int(w.shape[0]) for w in weights)
