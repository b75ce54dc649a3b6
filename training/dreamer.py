"""``python -m training.dreamer``: train a world model and a Dreamer agent (see --help).

    python -m training.dreamer --preset fusion --model vrkn --logdir runs/fusion-vrkn
    python -m training.dreamer --preset debug --model rssm
    python -m training.dreamer --resume runs/fusion-vrkn
"""

from __future__ import annotations

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main(None, "dreamer"))
