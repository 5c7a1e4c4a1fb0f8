"""The ``trifle-otel`` command group and its error reporting.

Every error is one ``error: ...`` line on standard error, never a traceback: exit status 1
for errors, 2 for a command line the parser cannot read.  Output cut short by the reader
(``| head -1``) is not an error.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import TrifleError
from . import demo, rules, serve, setup, stats, traces, ui
from .options import store_options
from .output import silence_stdout


# click >= 8.2 raises this for a group called without a command (older ones print the help).
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            silence_stdout()
            raise click.exceptions.Exit(0) from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a group named without its command: its help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else self.get_help(click.Context(self)))
            result = 0
        except click.UsageError as exc:
            click.echo(f"error: {_usage_message(exc)}", err=True)
            result = 2
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            result = exc.exit_code
        except click.Abort:
            click.echo("error: aborted", err=True)
            result = 1
        except TrifleError as exc:
            click.echo(f"error: {exc}", err=True)
            result = 1
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _usage_message(exc: click.UsageError) -> str:
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message
    return message + f" (see {exc.ctx.command_path if exc.ctx is not None else 'trifle-otel'} --help)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trifle-otel")
@store_options
def main(**_: Any) -> None:
    """trifle-otel: Trifle-style execution traces and stats from OpenTelemetry spans.

    The store options (--config, --home, --index-url, --data-url, --stats-url) go before
    or after the command.
    """


for _command in (demo.demo, setup.setup, traces.traces, stats.stats, rules.rules, serve.serve, ui.ui):
    main.add_command(_command)
