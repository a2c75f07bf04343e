"""Seeds per contender that C1's test needs, from a reproduction's per-seed scores.

Run (from the repository root)::

    python bench/c1_power.py docs/reproduction            # 80% power, the rule's 5% level
    python bench/c1_power.py docs/reproduction --power 0.9

C1's rule (``rllib_drqn.reproduce.RULES["C1"]``) is a one-sided Welch t-test of H0
``mu_DRQN <= 0.9 mu_DQN`` at 5%. Taking the report's means and standard deviations as the
truth, this finds the smallest number of seeds n per contender at which that test rejects H0
with the asked power, when DRQN really is non-inferior (``mu_DRQN > 0.9 mu_DQN``), or keeps
H0 with that power when it is not (the same test read the other way: ``mu_DRQN < 0.9 mu_DQN``
rejected one-sided). The power is the noncentral t's, with Welch's degrees of freedom at equal
n; the margin is taken as known, as the rule computes it from DQN's mean.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy import stats

MARGIN = 0.10
ALPHA = 0.05


def welch_power(delta: float, std_a: float, std_b: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a one-sided Welch t-test for ``mean_a - mean_b > 0`` at true gap ``delta``."""
    se2_a, se2_b = std_a**2 / n, std_b**2 / n
    se = math.sqrt(se2_a + se2_b)
    if se == 0:
        return 1.0 if delta > 0 else 0.0
    dof = (se2_a + se2_b) ** 2 / (se2_a**2 / (n - 1) + se2_b**2 / (n - 1))
    critical = stats.t.ppf(1 - alpha, dof)
    return float(1 - stats.nct.cdf(critical, dof, delta / se))


def seeds_needed(
    drqn: dict, dqn: dict, power: float, max_seeds: int = 1000
) -> tuple[int | None, float, str]:
    """(n per contender or None beyond ``max_seeds``, the true gap, the direction tested)."""
    gap = drqn["mean"] - (1 - MARGIN) * dqn["mean"]
    # Shifting DRQN's scores by the margin, as the rule does, leaves their spread as it is.
    direction = "holds" if gap > 0 else "does not hold"
    for n in range(2, max_seeds + 1):
        if welch_power(abs(gap), drqn["std"], dqn["std"], n) >= power:
            return n, gap, direction
    return None, gap, direction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="A reproduction directory (its claims.json).")
    parser.add_argument("--power", type=float, default=0.8)
    args = parser.parse_args(argv)
    numbers = json.loads((args.report / "claims.json").read_text())["claims"]["C1"]["numbers"]
    drqn, dqn = numbers["DRQN"], numbers["DQN-10"]
    n, gap, direction = seeds_needed(drqn, dqn, args.power)
    print(
        f"DRQN {drqn['mean']:.1f} +- {drqn['std']:.1f} and DQN-10 {dqn['mean']:.1f} +- "
        f"{dqn['std']:.1f} over {drqn['n']} seeds: mu_DRQN - 0.9 mu_DQN = {gap:.1f}"
    )
    if n is None:
        print(f"no seed count up to 1000 decides C1 ({direction}) with power {args.power:g}")
    else:
        print(f"seeds per contender for C1 to show it {direction} with power {args.power:g}: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
