"""Shared by the benchmark scripts: write a result table as Markdown and JSON."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine_meta(load_before: tuple[float, float, float], **extra: Any) -> dict[str, Any]:
    """Load averages before/after, date and core count (other jobs skew CPU timings)."""
    return {"loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), **extra}


def write_results(name: str, title: str, header: list[str], lines: list[list[Any]],
                  rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """bench/results/<name>.md (a table under ``title``) and <name>.json (rows + meta)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(x) for x in line) + " |" for line in lines]
    path = RESULTS / f"{name}.md"
    path.write_text(f"{title}\n\n" + "\n".join(table) + f"\n\n{json.dumps(meta)}\n")
    print(f"wrote {path}")
    return path
