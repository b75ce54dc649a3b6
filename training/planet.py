"""``python -m training.planet``: train a world model and act with PlaNet's CEM planner.

Same replay, loop, checkpoints and logs as ``training.dreamer``; the agent trains only the
world model (lr 1e-3) and plans with ``training.cem.cem_plan`` from the filtered state;
action repeat per domain (cheetah 4, walker 2, cartpole 8, cup 4). See --help.

    python -m training.planet --preset fusion --model vrkn --logdir runs/planet-fusion
"""

from __future__ import annotations

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main(None, "planet"))
