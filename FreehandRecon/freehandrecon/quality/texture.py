"""Input-texture feature layer of the guard: Laplacian-pyramid energy of the frame itself.

The autoencoder is trained to reproduce speckle-like texture and so learns to smooth pixel noise
away; its deeper features under-react to noisy frames. This layer looks at the guard frame
directly: for ``k = 0..levels-1`` the frame is 2x2-averaged ``k`` times (pixel 0.6, 1.2, 2.4 mm) and
the feature is ``log(mean(Lap(x_k)^2) + eps)`` with the 5-point Laplacian
``Lap(x)[i, j] = 4 x[i, j] - x[i-1, j] - x[i+1, j] - x[i, j-1] - x[i, j+1]`` (edges replicated).
The log makes the energies close to Gaussian for the Mahalanobis statistics, and the energies
at several scales together describe the spatial spectrum of the texture: uncorrelated noise
raises the finest scale far more than the coarser ones, whereas anatomy and speckle of the
training sites keep their own balance between the scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = 3
EPS = 1e-6
_LAPLACE = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian_energy(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """``[B, levels]`` log mean squared Laplacian of frames ``x [B, 1, S, S]`` at ``levels`` dyadic scales."""
    out = []
    kernel = _LAPLACE.to(dtype=x.dtype, device=x.device)
    h = x
    for k in range(levels):
        if k:
            h = F.avg_pool2d(h, 2)
        lap = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="replicate"), kernel)
        out.append(torch.log(lap.square().flatten(1).mean(dim=1) + EPS))
    return torch.stack(out, dim=1)
