"""MAC: maximum activations of convolutions (Radenović et al. 2016, section 3.1; docs/definitions.md §1).

f_k = max over (x, y) of max(X_k(x, y), 0): the global max of each rectified channel.
"""

from __future__ import annotations

import torch
from torch import nn

from retrievalkit import Component, hookimpl


class MACPooling(nn.Module):
    """Per-channel maximum of the rectified feature map, ``(B, K, H, W) -> (B, K)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.clamp(min=0).amax(dim=(-2, -1))


@hookimpl
def rkit_poolings() -> list[Component]:
    return [Component("mac", MACPooling, "max of each rectified channel (MAC)",
                      "Radenović et al. ECCV 2016, sec. 3.1")]
