"""The `dyembed` command: global flags, and one thin module per command."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from dyembed import __version__
from dyembed_cli import common
from dyembed_cli import demo_cmd, encode_cmd, evaluate_cmd, export_cmd, preprocess_cmd, state_cmd, synth_cmd, train_cmd, tune_cmd, update_cmd


class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, missing argument) as one `error: …` line, exit 2,
    like every other error (typer would draw a box over several lines)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            message = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            if message:  # (no arguments at all: the help was shown, nothing to add)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                sys.stderr.write(f"error: {message}{hint}\n")
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="dyembed",
    cls=_OneLineErrors,
    help="Dynamic user interest embeddings: preprocess logs, encode item texts with a language model, "
    "replay events through per-user online updates, and evaluate Recall@K / NDCG@K.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dyembed {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or notes; errors only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Info-level logs on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    log_format: Annotated[str, typer.Option("--log-format", help="Log lines on stderr as text or json.")] = "text",
) -> None:
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    common.GLOBALS.quiet = quiet
    common.GLOBALS.verbose = verbose
    common.GLOBALS.debug = debug
    common.GLOBALS.log_format = log_format


for module in (synth_cmd, preprocess_cmd, encode_cmd, train_cmd, tune_cmd, evaluate_cmd, update_cmd, state_cmd, export_cmd, demo_cmd):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
