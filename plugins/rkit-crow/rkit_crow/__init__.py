"""CroW: cross-dimensional weighting (Kalantidis, Mellina, Osindero, ECCV 2016 workshops, sec. 3).

Spatial weight alpha = (S / ||S||_2)^(1/2), S(x,y) = sum_k X_k(x,y) (normalised summed activations, a=b=2);
channel weight beta_k = log((K eps + sum_h Q_h) / (eps + Q_k)), Q_k = fraction of non-zero X_k(x,y)
(log inverse sparsity); f_k = beta_k * sum_(x,y) alpha(x,y) X_k(x,y). No PCA; retrievalkit L2-normalises.
"""

import torch
from retrievalkit import Component, hookimpl


class CroWPooling(torch.nn.Module):
    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(dim=1, keepdim=True).clamp(min=0)
        alpha = (s / s.flatten(1).norm(dim=1).clamp(min=self.eps).view(-1, 1, 1, 1)).sqrt()
        q = (x > 0).float().mean(dim=(-2, -1))
        beta = torch.log((x.shape[1] * self.eps + q.sum(dim=1, keepdim=True)) / (self.eps + q))
        return beta * (alpha * x).sum(dim=(-2, -1))


@hookimpl
def rkit_poolings():
    return [Component("crow", CroWPooling, "CroW cross-dimensional weighting", "Kalantidis et al. 2016")]
