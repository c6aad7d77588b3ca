"""``LinearSchedule``: a value that moves linearly from ``start`` to ``end`` and stays there."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """``start`` at step 0, ``end`` from step ``duration`` on, linear in between.

    Example:
        >>> eps = LinearSchedule(1.0, 0.04, 8_000)    # exploration over 16% of 50k steps
        >>> eps(0), eps(4_000), eps(20_000)
        (1.0, 0.52, 0.04)
    """

    start: float
    end: float
    duration: int

    def __call__(self, step: int) -> float:
        if self.duration <= 0 or step >= self.duration:
            return self.end
        return self.start + (self.end - self.start) * (step / self.duration)
