"""CLI: ``python -m training.lgssm --out DIR [--quick] [...]`` (see ``--help``).

Exit code 0 when every claim check passes, 1 when any fails (the outputs are written
either way), 2 for bad options."""

from __future__ import annotations

import argparse
import cmath
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from training.lgssm.experiment import Config, run_experiment
from training.lgssm.model import ground_truth
from training.lgssm.report import format_claims, format_table, write_outputs

# --quick: small enough for the test suite (< 2 min on a shared 2-core CPU), large enough
# that the qualitative claims hold with margin.
QUICK = {"seeds": 3, "sequences": 300, "eval_sequences": 300, "steps_rssm": 250,
         "steps_cf": 250, "steps_nn": 300, "batch_nn": 100, "bootstrap": 2000}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m training.lgssm",
        description="Toy experiment of the VRKN paper, Sec. 2.2 / Fig. 2: learn A~ and the "
        "transition variance sigma~ of a 4-D linear-Gaussian SSM under the RSSM bound (Eq. 3) "
        "and the SSM bound (Eq. 4; closed form via Kalman smoothing, and with a backward-GRU "
        "inference network). Prints a table and writes results.json, figure.png and "
        "table.md into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/lgssm"),
                   help="output folder (created)")
    p.add_argument("--quick", action="store_true",
                   help="small settings for tests (< 2 min): " +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()) +
                   "; options given explicitly still win")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help=f"number of seeds (default {d.seeds})")
    p.add_argument("--base-seed", type=int, default=None,
                   help=f"first seed; seeds are base..base+n-1 (default {d.base_seed})")
    p.add_argument("--sequences", type=_positive_int, default=None,
                   help=f"training sequences per seed (default {d.sequences})")
    p.add_argument("--eval-sequences", type=_positive_int, default=None,
                   help=f"held-out sequences per seed (default {d.eval_sequences})")
    p.add_argument("--length", type=_positive_int, default=None,
                   help=f"sequence length T (default {d.length})")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="Adam steps for every method (overrides the per-method defaults)")
    p.add_argument("--steps-rssm", type=_positive_int, default=None,
                   help=f"Adam steps, RSSM bound (default {d.steps_rssm})")
    p.add_argument("--steps-cf", type=_positive_int, default=None,
                   help=f"Adam steps, SSM bound closed form (default {d.steps_cf})")
    p.add_argument("--steps-nn", type=_positive_int, default=None,
                   help=f"Adam steps, SSM bound with the GRU (default {d.steps_nn})")
    p.add_argument("--batch-nn", type=_positive_int, default=None,
                   help=f"minibatch of sequences for the GRU method (default {d.batch_nn}; "
                   "the others use the full batch)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"Adam learning rate of A~ and log sigma~ (default {d.lr_model})")
    p.add_argument("--lr-inference", type=_positive_float, default=None,
                   help=f"Adam learning rate of the inference models (default {d.lr_inference})")
    p.add_argument("--hidden", type=_positive_int, default=None,
                   help=f"GRU hidden size (default {d.hidden})")
    p.add_argument("--init-sigma", type=_positive_float, default=None,
                   help=f"initial sigma~ for every method (default {d.init_sigma})")
    p.add_argument("--estimator", choices=("analytic", "mc"), default=None,
                   help="expectations in Eq. 3/4: closed form, or the paper's single-sample "
                   f"Monte Carlo (default {d.estimator})")
    p.add_argument("--bootstrap", type=_positive_int, default=None,
                   help=f"bootstrap resamples for the 95%% CIs (default {d.bootstrap})")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads; the tensors are tiny, so more threads mostly add "
                   "contention on a shared machine")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then --quick, then explicit options."""
    cfg = Config()
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.steps is not None:
        cfg = replace(cfg, steps_rssm=args.steps, steps_cf=args.steps, steps_nn=args.steps)
    renames = {"lr": "lr_model"}
    names = {f.name for f in fields(Config)}
    updates = {}
    for key, value in vars(args).items():
        field = renames.get(key, key)
        if value is not None and field in names:
            updates[field] = value
    cfg = replace(cfg, **updates, progress=not args.no_progress)
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    torch.set_printoptions(precision=4, sci_mode=False)
    print("Ground-truth A (eigenvalues "
          + ", ".join(f"{abs(e):.3f} exp({cmath.phase(e):+.3f}i)"
                      for e in torch.linalg.eigvals(ground_truth().A).tolist()) + "):")
    print(ground_truth().A.numpy().round(4))
    print(f"Config: {cfg}")
    results = run_experiment(cfg)
    paths = write_outputs(results, args.out)
    print()
    print(format_table(results))
    print()
    print(format_claims(results))
    print(f"\nWrote {', '.join(str(p) for p in paths.values())} "
          f"({time.perf_counter() - start:.0f} s)")
    return results


def cli(argv: list[str] | None = None) -> int:
    """``main``, then the exit code: 1 when a claim check failed."""
    results = main(argv)
    failed = [c["claim"] for c in results["claims"].values() if not c["holds"]]
    if failed:
        print(f"error: {len(failed)} of {len(results['claims'])} claim checks failed: "
              f"{'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
