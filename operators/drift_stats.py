"""The statistics behind `monitor.drift`: cheap per-frame image figures, rolling histograms, PSI.

Per-frame figures come from a gray copy downscaled to a fixed width with one linear resize
(~0.3 ms for a 720p or 1080p frame): mean luma (brightness), its standard deviation (contrast),
the variance of its Laplacian (sharpness) and the mean absolute difference to the previous
frame (motion; ~0 when frozen). Histograms use linear (soft) binning: a value splits its weight
between the two nearest bin centres, so a shift smaller than a bin moves weight gradually and
PSI grows smoothly with the shift instead of jumping at bin edges.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
PSI_FLOOR = 0.01  # the share an empty bin is taken to hold (PSI is undefined at 0)
_KERNELS = {0: np.ones(1), 1: np.asarray([1, 2, 1]) / 4, 2: np.asarray([1, 4, 6, 4, 1]) / 16}


@dataclass(frozen=True)
class Bins:
    """`n` equal bins over [lo, hi); values outside go to the first or last bin.

    `tolerance`: the bins PSI smooths over on each side (0..2): how far a shift goes unnoticed.
    """

    lo: float
    hi: float
    n: int
    tolerance: int = 2

    def soft(self, values: Floats) -> tuple[npt.NDArray[np.int64], Floats]:
        """(bin indices, weights), two entries per value, weights summing to 1 per value."""
        pos = np.clip((values - self.lo) / (self.hi - self.lo) * self.n - 0.5, 0, self.n - 1)
        left = np.minimum(np.floor(pos).astype(np.int64), self.n - 1)
        frac = pos - left
        return np.concatenate([left, np.minimum(left + 1, self.n - 1)]), np.concatenate([1 - frac, frac])

    def histogram(self, values: Floats) -> Floats:
        counts = np.zeros(self.n)
        idx, w = self.soft(values)
        np.add.at(counts, idx, w)
        return counts


def smooth(counts: Floats, radius: int) -> Floats:
    """Counts blurred over `radius` (0..2) bins each side (binomial kernel, mass kept at the edges)."""
    padded = np.concatenate([np.repeat(counts[:1], radius), counts, np.repeat(counts[-1:], radius)])
    return np.asarray(np.convolve(padded, _KERNELS[radius], "valid"), np.float64)


def psi(reference: Floats, current: Floats, radius: int = 2) -> float:
    """Population stability index of two histograms (counts), each smoothed over `radius` bins.

    The smoothing makes a shift of less than about a bin cost little: drift is a move of several
    bins, not a narrow distribution straddling a bin edge. With half-octave bins and radius 2, a
    shift of 0.2 octave gives ~0.15, 0.5 octave ~0.8, 1 octave ~2.8. 0 when either is empty.
    """
    r_total, c_total = float(reference.sum()), float(current.sum())
    if r_total <= 0 or c_total <= 0:
        return 0.0
    r = np.maximum(smooth(reference, radius) / r_total, PSI_FLOOR)
    c = np.maximum(smooth(current, radius) / c_total, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def log_scale(value: float) -> float:
    """log2(1 + value): luma and its spread change by factors (exposure, gain), so bins are octaves."""
    return math.log2(1.0 + max(value, 0.0))


@dataclass
class Rolling:
    """A histogram of the values seen in the last `window_s` seconds of stream time."""

    bins: Bins
    window_s: float
    counts: Floats = field(init=False)
    entries: deque[tuple[float, npt.NDArray[np.int64], Floats]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.bins.n)

    def add(self, t: float, values: Floats) -> None:
        idx, w = self.bins.soft(values)
        np.add.at(self.counts, idx, w)
        self.entries.append((t, idx, w))
        while self.entries and self.entries[0][0] <= t - self.window_s:
            _, old_idx, old_w = self.entries.popleft()
            np.subtract.at(self.counts, old_idx, old_w)

    def span_s(self) -> float:
        """Stream time the window covers."""
        return self.entries[-1][0] - self.entries[0][0] if self.entries else 0.0

    def clear(self) -> None:
        self.entries.clear()
        self.counts[:] = 0


@dataclass(frozen=True)
class FrameStats:
    gray: npt.NDArray[np.uint8]
    brightness: float
    contrast: float
    sharpness: float  # variance of the Laplacian of the downscaled gray image

    @property
    def relative_sharpness(self) -> float:
        """Sharpness over contrast squared: blur lowers it, darkness (a gain) does not."""
        return self.sharpness / max(self.contrast**2, 1.0)

    def log_sharpness(self) -> float:
        return math.log2(max(self.relative_sharpness, 1e-4))


def frame_stats(image: npt.NDArray[np.uint8], pixel_format: str, width: int) -> FrameStats:
    """Brightness, contrast and sharpness of an HWC RGB/BGR (or HW gray) frame, at `width` px."""
    h, w = image.shape[:2]
    size = (width, max(1, round(h * width / w))) if w > width else (w, h)
    small = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if size != (w, h) else image
    if small.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if pixel_format.startswith("bgr") else cv2.COLOR_RGB2GRAY
        small = cv2.cvtColor(small, code)
    gray = np.ascontiguousarray(small, dtype=np.uint8)
    mean, std = cv2.meanStdDev(gray)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    return FrameStats(gray, float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2)


def motion(gray: npt.NDArray[np.uint8], previous: npt.NDArray[np.uint8] | None) -> float | None:
    """Mean absolute difference of two gray frames of one size; None without a comparable one."""
    if previous is None or previous.shape != gray.shape:
        return None
    return float(cv2.mean(cv2.absdiff(gray, previous))[0])


@dataclass
class Alarm:
    """Onset and recovery of one drift condition: raised after `hold_s`, cleared after `clear_s`."""

    since: float | None = None  # the condition has held since (stream seconds)
    clear_since: float | None = None
    raised_at: float | None = None

    @property
    def active(self) -> bool:
        return self.raised_at is not None

    def update(self, condition: bool, now: float, hold_s: float, clear_s: float) -> str | None:
        """'raise' at an onset, 'clear' at a recovery, else None."""
        if condition:
            self.clear_since = None
            self.since = now if self.since is None else self.since
            if not self.active and now - self.since >= hold_s:
                self.raised_at = now
                return "raise"
            return None
        self.since = None
        if self.active:
            self.clear_since = now if self.clear_since is None else self.clear_since
            if now - self.clear_since >= clear_s:
                self.raised_at = self.clear_since = None
                return "clear"
        return None
