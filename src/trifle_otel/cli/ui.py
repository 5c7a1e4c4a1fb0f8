"""``trifle-otel ui``: the web UI alone, over the configured stores (for processor users)."""

from __future__ import annotations

import click

from ..config import Config
from ..stores import redact
from .options import config_options


@click.command("ui")
@click.option("--listen", help="HOST:PORT to serve on (setting ui.listen, default 127.0.0.1:4320).")
@config_options
def ui(config: Config, listen: str | None) -> None:
    """Serve the web UI: executions, traces, running jobs and stats (read-only)."""
    from ..ui.app import create_app
    from ..ui.server import bind, parse_listen, serve_socket

    address = listen or config.ui_listen
    app = create_app(config, listen=address)
    host, port = parse_listen(address)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"trifle-otel UI on http://{shown}:{sock.getsockname()[1]}/ "
               f"(index {redact(config.resolved_index_url())}; Ctrl-C stops it)")
    if not (config.ui_token or config.ui_basic_auth) and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host} without ui.token or ui.basic_auth: anyone who reaches it reads your traces",
                   err=True)
    serve_socket(app, sock)
