"""Screen and video captures of an ultrasound scanner (MP4, MOV, AVI, MKV) decoded with PyAV.

A video carries no pixel spacing: give it with ``--pixel-spacing`` (sensorless poses refuse to run without
it). Frames are decoded as RGB, turned to grey (colour overlays filled from their grey neighbours) and cropped
to the image region (``--crop``, else detected; see :mod:`.region`). Timestamps are the frames' presentation
times, from 0. PyAV is imported only when a video is read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .region import finish_capture, grey_and_colour

SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


def read_video_sweep(path: str | os.PathLike, *, crop: Any = None) -> Sweep:
    """Read every frame of the first video stream of ``path`` into an untracked :class:`Sweep`."""
    import av

    p = Path(path)
    greys, colours, times = [], [], []
    try:
        container = av.open(str(p))
    except av.FFmpegError as err:
        raise InputError(f"'{p}' cannot be opened as a video ({err}).",
                         "Give an MP4, MOV, AVI or MKV file that a video player can play; a file cut short (an "
                         "interrupted recording or copy) cannot be read: record or copy it again.") from None
    with container:
        if not container.streams.video:
            raise InputError(f"'{p}' has no video stream.", "Give the video file of the screen capture.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        try:
            for frame in container.decode(stream):
                grey, colour = grey_and_colour(frame.to_ndarray(format="rgb24"))
                greys.append(grey)
                colours.append(np.packbits(colour, axis=-1))  # 1 bit per pixel until the frames are cropped
                times.append(frame.time)
        except av.FFmpegError as err:
            if not greys:
                raise InputError(f"'{p}' has no decodable frame ({err}).",
                                 "The file is probably truncated or damaged; record or copy it again.") from None
            warnings.warn(f"'{p}': decoding stopped after {len(greys)} frames ({err}); the file is probably "
                          "truncated.", stacklevel=2)
    if len(greys) < 2:
        raise InputError(f"'{p}' has {len(greys) or 'no'} video frame(s); a sweep needs at least 2.",
                         "Give the capture of a whole sweep (a few seconds of video).")
    grey = np.stack(greys)
    width = grey.shape[2]
    colour = np.unpackbits(np.stack(colours), axis=-1, count=width).astype(bool)
    frames, meta = finish_capture(grey, colour, file_region=None, crop=crop)
    if all(t is not None for t in times):
        stamps = np.asarray(times, dtype=np.float64)
        source = "presentation times"
    else:
        stamps = np.arange(len(times)) / rate if rate else None
        source = "average frame rate" if rate else "none"
    if stamps is not None:
        order_ok = np.all(np.diff(stamps) > 0)
        meta["video_start_time_s"] = float(stamps[0])
        stamps = stamps - stamps[0] if order_ok else None
        source = source if order_ok else "none (times not increasing)"
    meta.update(source=str(p), format="video", codec=stream.codec_context.name,
                frame_rate=None if rate is None else round(rate, 3), frame_time_source=source,
                pixel_spacing_source="none", pixel_spacing_known=False)
    return Sweep(frames=frames, pixel_spacing=(1.0, 1.0), timestamps=stamps, metadata=meta)
