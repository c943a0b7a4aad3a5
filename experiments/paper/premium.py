"""The ODE premium: per-example robust accuracy of an ODE-net minus that of its base model (the same stem and
head without the ODE block), on the same images, with a 95% interval for the paired difference.

The two robust-accuracy estimates share their images, so the interval is Newcombe's (1998, method 10) for a
difference of paired proportions: Wilson score intervals of both margins, combined through the correlation
φ of the 2 × 2 table of (robust with, robust without). It stays inside [-1, 1] and is not degenerate at
0 or n robust images, where the Wald interval collapses to a point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: (p̂ + z²/2n ± z √(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


@dataclass(frozen=True)
class PairedDifference:
    """p_with − p_without on the same n images, with its 95% interval; ``both``/``only_with``/
    ``only_without``/``neither`` are the 2 × 2 table's counts."""

    both: int
    only_with: int
    only_without: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_with + self.only_without + self.neither

    @property
    def with_rate(self) -> float:
        return (self.both + self.only_with) / self.n

    @property
    def without_rate(self) -> float:
        return (self.both + self.only_without) / self.n

    @property
    def difference(self) -> float:
        return (self.only_with - self.only_without) / self.n

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Newcombe's method 10: Δ − √((p₁ − l₁)² − 2φ(p₁ − l₁)(u₂ − p₂) + (u₂ − p₂)²) and
        Δ + √((u₁ − p₁)² − 2φ(u₁ − p₁)(p₂ − l₂) + (p₂ − l₂)²)."""
        a, b, c, d, n = self.both, self.only_with, self.only_without, self.neither, self.n
        p1, p2 = self.with_rate, self.without_rate
        l1, u1 = wilson(a + b, n, z)
        l2, u2 = wilson(a + c, n, z)
        denominator = (a + b) * (c + d) * (a + c) * (b + d)
        phi = (a * d - b * c) / math.sqrt(denominator) if denominator > 0 else 0.0
        lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
        upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
        delta = self.difference
        return max(-1.0, delta - lower), min(1.0, delta + upper)


def paired(with_block: Sequence[bool], without_block: Sequence[bool]) -> PairedDifference:
    """The 2 × 2 table of two per-image outcomes (True: robust) on the same images."""
    if len(with_block) != len(without_block) or not with_block:
        raise ValueError(
            f"paired outcomes need the same non-zero number of images, got {len(with_block)} and "
            f"{len(without_block)}"
        )
    pairs = list(zip(map(bool, with_block), map(bool, without_block)))
    return PairedDifference(
        both=sum(a and b for a, b in pairs),
        only_with=sum(a and not b for a, b in pairs),
        only_without=sum(b and not a for a, b in pairs),
        neither=sum(not a and not b for a, b in pairs),
    )


def images_for_half_width(half_width: float, discordant: float = 0.5, z: float = Z95) -> int:
    """Images that bound the paired difference's normal-approximation half width by ``half_width`` when at
    most a share ``discordant`` of the images is robust under one model only:
    Var(Δ̂) = (π_b + π_c − (π_b − π_c)²)/n ≤ discordant/n, so n = ⌈z² · discordant / h²⌉."""
    if not 0 < half_width < 1 or not 0 < discordant <= 1:
        raise ValueError(f"need 0 < half_width < 1 and 0 < discordant <= 1, got {half_width}, {discordant}")
    return math.ceil(z * z * discordant / (half_width * half_width))
