"""Statistics the benchmark scripts (`run.sh`, `plugins.sh`) share."""

import random
import statistics


def ratio_interval(xs, ys, draws=2000, seed=1):
    """A 95 % bootstrap interval of median(xs) / median(ys): each side's values drawn again
    with replacement, `draws` times, from a fixed seed, so that the same runs always print
    the same interval. None with fewer than two values on either side."""
    if len(xs) < 2 or len(ys) < 2:
        return None
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(xs, k=len(xs))) / statistics.median(rng.choices(ys, k=len(ys)))
        for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def format_interval(interval):
    """`0.93 to 1.17`, or `-` when there is none."""
    return "-" if interval is None else f"{interval[0]:.2f} to {interval[1]:.2f}"


def cpu_us_per_message(run):
    """The broker's CPU (µs) per message the run delivered: its `broker_cpu_ns` over `received`."""
    return run["broker_cpu_ns"] / 1000 / max(run["received"], 1)
