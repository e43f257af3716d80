"""The guard's convolutional autoencoder: ``S x S`` frame -> 128-d latent -> ``S x S`` frame.

Encoder: per level a stride-2 3x3 convolution (batch norm, leaky ReLU), then a linear layer to
the latent. Decoder: a linear layer, per level a 3x3 convolution at the coarse resolution followed
by x2 bilinear upsampling (convolving before upsampling keeps the cost at a quarter), and a last
3x3 convolution with a sigmoid (``decoder.last``: the layer whose gradients calibrate the phase-2
loss weights, see :mod:`.losses`). About 0.4 M parameters and 7 M multiply-adds per 64 x 64 frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class GuardConfig:
    """Architecture and input grid of the guard."""

    input_size: int = 64
    input_spacing: float = 0.6
    latent: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.input_size % (2 ** len(self.widths)):
            raise ValueError(f"input_size {self.input_size} must be a multiple of {2 ** len(self.widths)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GuardConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown guard config keys {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k == "widths" else v) for k, v in d.items()})


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True)]


class Decoder(nn.Module):
    def __init__(self, config: GuardConfig) -> None:
        super().__init__()
        w = list(config.widths)
        self.base = config.input_size // 2 ** len(w)
        self.top = w[-1]
        self.fc = nn.Linear(config.latent, w[-1] * self.base * self.base)
        layers: list[nn.Module] = []
        outs = w[::-1][1:] + [w[0]]
        outs[-1] = max(w[0] // 2, 4)
        for c_in, c_out in zip(w[::-1], outs):
            layers += [*_block(c_in, c_out, 1), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(outs[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.fc(z), 0.1).view(-1, self.top, self.base, self.base)
        return torch.sigmoid(self.last(self.body(h)))


class GuardAE(nn.Module):
    """Autoencoder on ``[B, 1, S, S]`` frames in [0, 1]."""

    def __init__(self, config: GuardConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for c in config.widths:
            layers += _block(c_in, c, 2)
            c_in = c
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        s = config.input_size // 2 ** len(config.widths)
        self.to_latent = nn.Linear(config.widths[-1] * s * s, config.latent)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per encoder level the channel means and standard deviations ``[B, 2 C]``, and the latent."""
        pooled, h = [], x
        for m in self.encoder:
            h = m(h)
            if isinstance(m, nn.LeakyReLU):
                pooled.append(torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1))
        return pooled, self.to_latent(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decoder(z), z


def build_guard(config: GuardConfig | None = None) -> GuardAE:
    """A freshly initialised guard autoencoder."""
    return GuardAE(config or GuardConfig())
