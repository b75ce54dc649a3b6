"""Render the nginx configuration of a fleet (``nginx.conf.template``): the http{} snippet
the nginx image also renders with envsubst, and for a fleet on loopback an unprivileged
main file around it (no root: pid, logs and temporary files in one folder)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
# Only ${VRKN_*} is ours; nginx's own variables ($http_x_session_id, $uri) are left alone.
PLACEHOLDER = re.compile(r"\$\{(VRKN_[A-Z_]+)\}")


def upstream_servers(addresses: Sequence[str], fail_timeout_s: float = 2.0) -> str:
    """``server HOST:PORT ...;`` lines: one failed connection marks a replica down for
    ``fail_timeout_s`` (its calls go to the next replica on the ring meanwhile)."""
    if not addresses:
        raise ValueError("a fleet needs at least one replica")
    return " ".join(f"server {a} max_fails=1 fail_timeout={fail_timeout_s:g}s;"
                    for a in addresses)


def render(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """The template with every ``${VRKN_*}`` replaced; KeyError names a missing one."""
    text = template.read_text()
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{template.name}: no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def fleet_snippet(grpc: Sequence[str], http: Sequence[str], grpc_listen: str,
                  http_listen: str) -> str:
    return render({"VRKN_GRPC_SERVERS": upstream_servers(grpc),
                   "VRKN_HTTP_SERVERS": upstream_servers(http),
                   "VRKN_GRPC_LISTEN": grpc_listen, "VRKN_HTTP_LISTEN": http_listen})


def local_main(folder: Path, snippet: Path) -> str:
    """An nginx main file for an unprivileged run in the foreground (``nginx -p folder
    -c FILE -e folder/error.log``)."""
    f = Path(folder).resolve()
    temp = "\n".join(f"    {k}_temp_path {f / k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\nworker_processes 1;\npid {f / 'nginx.pid'};\n"
            f"error_log {f / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}\n    include {Path(snippet).resolve()};\n}}\n")
