"""The P² estimator of the quartiles (Jain and Chlamtac, 1985), in plain Python floats.

Five markers track the minimum, Q1, the median, Q3 and the maximum of a stream: the first five values
set them (sorted), and each later value moves the markers' positions and, when a marker strays from
its desired position by a whole step, its height by the piecewise-parabolic (P²) formula, or
linearly when the parabola would leave the neighbours' heights.
"""

from __future__ import annotations

INCREMENTS = (0.0, 0.25, 0.5, 0.75, 1.0)


class Quartiles:
    def __init__(self) -> None:
        self.count = 0
        self.heights: list[float] = []
        self.positions = [1.0, 2.0, 3.0, 4.0, 5.0]
        self.desired = [1.0, 2.0, 3.0, 4.0, 5.0]

    def add(self, x: float) -> None:
        self.count += 1
        if self.count <= 5:
            self.heights.append(x)
            if self.count == 5:
                self.heights.sort()
            return
        q, n = self.heights, self.positions
        if x < q[0]:
            q[0] = x
        if x > q[4]:
            q[4] = x
        cell = sum(1 for i in (1, 2, 3) if q[i] <= x)  # q[cell] <= x < q[cell + 1]
        for i in range(cell + 1, 5):
            n[i] += 1
        for i in range(5):
            self.desired[i] += INCREMENTS[i]
        for i in (1, 2, 3):
            d = self.desired[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                s = 1 if d > 0 else -1
                parabolic = q[i] + s / (n[i + 1] - n[i - 1]) * (
                    (n[i] - n[i - 1] + s) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                    + (n[i + 1] - n[i] - s) * (q[i] - q[i - 1]) / (n[i] - n[i - 1]))
                if q[i - 1] < parabolic < q[i + 1]:
                    q[i] = parabolic
                else:
                    q[i] = q[i] + s * (q[i + s] - q[i]) / (n[i + s] - n[i])
                n[i] += s

    def threshold(self, k: float, iqr_floor: float, warmup: int) -> float | None:
        """`Q3 + k·max(Q3 − Q1, iqr_floor)`, or None while fewer than `warmup` values were absorbed."""
        if self.count < warmup:
            return None
        if self.count < 5:
            raise NotImplementedError("docs/semantics.md §5 gives no quartiles before five values")
        q1, q3 = self.heights[1], self.heights[3]
        return q3 + k * max(q3 - q1, iqr_floor)
