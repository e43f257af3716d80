"""The learned pose network's configuration as plain data (no torch): the model json, the command line's
defaults and the loss weights read it without importing PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ARCHITECTURE = "moglo-lite-v1"          # frames only
ARCHITECTURE_V2 = "moglo-lite-v2"       # frames + calibrated decorrelation features (decorrelation_lags)


@dataclass(frozen=True)
class PoseNetConfig:
    """Architecture and input geometry of :class:`PoseNet` (stored in the model json)."""

    input_size: int = 128          # model frames are input_size x input_size pixels
    input_spacing: float = 0.3     # mm per model pixel (isotropic)
    widths: tuple[int, int, int, int] = (12, 24, 48, 64)  # stem, stage 1 (per frame), stage 2, stage 3
    global_width: int = 128        # stage 4 channels
    corr_radius: int = 3           # feature correlation search window +-r positions at 1/4 resolution
    ncc_radius: int = 2            # raw-patch NCC offsets +-r input pixels
    feature_dim: int = 128         # per-pair feature size fed to the LSTMs
    hidden: int = 128              # LSTM hidden size
    bidirectional: bool = True     # LSTMs see the whole window in both directions
    window: int = 8                # pairs per training window / inference window
    decorrelation_lags: tuple[int, ...] = ()  # v2: lags of the calibrated decorrelation features (poses.decorrelation)
    decorrelation_floor_lag: int = 0          # v2: lag of the structure-floor channels (0: none)

    @property
    def architecture(self) -> str:
        return ARCHITECTURE_V2 if self.decorrelation_lags else ARCHITECTURE

    @property
    def decorrelation_channels(self) -> int:
        if not self.decorrelation_lags:
            return 0
        from .decorrelation import feature_channels

        return feature_channels(self.decorrelation_lags, self.decorrelation_floor_lag)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["decorrelation_lags"] = list(self.decorrelation_lags)
        d["architecture"] = self.architecture
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"architecture"})
        if unknown:
            raise ValueError(f"unknown PoseNetConfig fields: {unknown}")
        kw = {k: v for k, v in d.items() if k in known}
        if "widths" in kw:
            kw["widths"] = tuple(int(v) for v in kw["widths"])
        if "decorrelation_lags" in kw:
            kw["decorrelation_lags"] = tuple(int(v) for v in kw["decorrelation_lags"])
        cfg = cls(**kw)
        if d.get("architecture", cfg.architecture) != cfg.architecture:
            raise ValueError(f"architecture '{d.get('architecture')}' does not match its fields ('{cfg.architecture}')")
        return cfg

    def validate(self) -> None:
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {self.widths}")
        if any(int(j) < 1 for j in self.decorrelation_lags):
            raise ValueError(f"decorrelation_lags must be positive, got {self.decorrelation_lags}")
        if self.decorrelation_floor_lag < 0:
            raise ValueError(f"decorrelation_floor_lag must be >= 0, got {self.decorrelation_floor_lag}")



@dataclass
class LossWeights:
    """Weights of the loss terms (``triplet`` 0 disables it)."""

    mae: float = 1.0
    correlation: float = 0.2
    corner: float = 0.1
    triplet: float = 0.0
    heads: float = 0.5  # extra MAE weight on each of the local and global heads
    drift_rate: float = 0.0
