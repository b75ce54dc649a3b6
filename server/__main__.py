"""``python -m server --bundle DIR --grpc-port N --http-port M``: flags override the
``VRKN_*`` environment variables (server/settings.py lists them all)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def parse_args(argv: list[str] | None = None) -> dict:
    from server.settings import Settings

    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--bundle", action="append", help="bundle folder, NAME=PATH or PATH "
                   "(repeat for several models; the first is the default)")
    for name, field in Settings.model_fields.items():
        if name == "bundle":
            continue
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        typ = {int: int, float: float}.get(kind, str)
        p.add_argument(flag, type=typ, default=None, help=field.description)
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    from server.app import run
    from server.settings import Settings

    overrides = parse_args(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(settings)  # a bad bundle exits with a one-line message (server.app.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
