"""Frozen-latent site probe: a linear softmax classifier of the site from the guard latent.

On frames of a seen site it should be confident (high max-softmax, low entropy); on a site it
never saw, less so. Entropy is in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SiteProbe:
    weight: np.ndarray   # [C, p]
    bias: np.ndarray     # [C]
    mean: np.ndarray     # [p] standardisation
    scale: np.ndarray    # [p]

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        u = (np.asarray(z, np.float64) - self.mean) / self.scale
        logits = u @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def confidence(self, z: np.ndarray) -> dict[str, float]:
        """Mean max-softmax and mean entropy over frames."""
        p = self.probabilities(z)
        ent = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
        return {"max_softmax": float(p.max(axis=1).mean()), "entropy": float(ent.mean())}


def fit_probe(z: np.ndarray, labels: np.ndarray, num_classes: int, weight_decay: float = 1e-2,
              steps: int = 300, seed: int = 0) -> SiteProbe:
    """Multinomial logistic regression (L2-regularised, full-batch L-BFGS) on standardised latents."""
    z = np.asarray(z, np.float64)
    mean, scale = z.mean(axis=0), z.std(axis=0) + 1e-6
    torch.manual_seed(seed)
    u = torch.from_numpy((z - mean) / scale).float()
    y = torch.from_numpy(np.asarray(labels, np.int64))
    lin = torch.nn.Linear(u.shape[1], num_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(u), y) + weight_decay * (lin.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return SiteProbe(lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy(), mean, scale)
