"""The range test's numbers: the lr of each step, the smoothed loss, when it has diverged,
and the suggestion. Plain Python, so the rule is tested without a model."""
import bisect
import math

DIVERGED = 4.0  # the smoothed loss this many times its minimum: the test ends (fastai's rule)


def lr_at(step, steps, start, end):
    """The lr of step `step` (0-based) of `steps`: exponential from start to end."""
    return start * (end / start) ** (step / max(1, steps - 1))


def smoothing(steps):
    """The EMA factor of the smoothed loss: 0.98 over a few hundred steps (fastai's), less for a
    short test, so that its memory (about 1 / (1 - beta) steps) stays a tenth of the test or
    less and the curve does not lag the lr."""
    return min(0.98, max(0.5, 1 - 5 / steps))


class RangeTest:
    """Feed it each step's (lr, loss); it says when to stop and what to suggest."""

    def __init__(self, steps):
        self.beta = smoothing(steps)
        self.skip = max(3, steps // 10)  # the first steps: the average has not settled
        self.lrs, self.losses, self.smoothed = [], [], []
        self.average = 0.0
        self.stopped = None  # why the test ended before its last step

    def add(self, lr, loss):
        """Record one step; False when the test should stop (the loss diverged or is not finite)."""
        if not math.isfinite(loss):
            self.stopped = f"the loss became {loss} at lr {lr:.2e}"
            return False
        self.average = self.beta * self.average + (1 - self.beta) * loss
        value = self.average / (1 - self.beta ** (len(self.losses) + 1))  # bias-corrected, as Adam's moments
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(value)
        best = min(self.smoothed[self.skip:] or self.smoothed)
        if len(self.smoothed) > self.skip and value > DIVERGED * best:
            self.stopped = f"the loss diverged at lr {lr:.2e} ({value:.3g}, over {DIVERGED:g}x its minimum {best:.3g})"
            return False
        return True

    def minimum(self):
        """Index of the smoothed loss's minimum (after the settling steps)."""
        start = min(self.skip, len(self.smoothed) - 1)
        return min(range(start, len(self.smoothed)), key=self.smoothed.__getitem__)

    def valley(self):
        """(first, last) indices of the longest descent of the smoothed loss up to its
        minimum: the longest run of points each below the one before, gaps allowed (a
        longest decreasing subsequence), so a noisy stretch still counts as one fall."""
        values = self.smoothed[:self.minimum() + 1]
        tails, tail_index, previous = [], [], [None] * len(values)  # patience sorting on -loss
        for index, value in enumerate(values):
            place = bisect.bisect_left(tails, -value)
            if place == len(tails):
                tails.append(-value)
                tail_index.append(index)
            else:
                tails[place], tail_index[place] = -value, index
            previous[index] = tail_index[place - 1] if place else None
        last = tail_index[-1]
        first = last
        while previous[first] is not None:
            first = previous[first]
        return first, last

    def suggestion(self):
        """(lr, how it was chosen): two thirds of the way down the longest descent of the
        smoothed loss (fastai's "valley" rule): fast, and short of where the loss turns."""
        if len(self.smoothed) < 3:
            raise ValueError("the range test needs at least 3 points")
        first, last = self.valley()
        if last - first < 2:
            lowest = self.minimum()
            return max(self.lrs[0], self.lrs[lowest] / 10), "a tenth of the lr at the loss's minimum (it never fell)"
        return self.lrs[first + (last - first) * 2 // 3], "two thirds down the longest fall of the smoothed loss"
