"""The `dyembed` command: global flags, and one thin module per command."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from dyembed import __version__
from dyembed_cli import common
from dyembed_cli import demo_cmd, encode_cmd, evaluate_cmd, export_cmd, preprocess_cmd, state_cmd, synth_cmd, train_cmd, update_cmd


REMOTE = re.compile(r"(^|=)[a-zA-Z][a-zA-Z0-9+.-]+://")  # a URL as an argument or a --set value


class OneLineErrors(TyperGroup):
    """Usage errors (bad flag, bad value, missing argument) as ONE line `error: …` on stderr, exit 2,
    like every other error of dyembed (instead of click's usage block)."""

    def main(self, *args, standalone_mode: bool = True, **extra):
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **extra)
        argv = extra.get("args", args[0] if args else None)
        remote = next((a for a in (sys.argv[1:] if argv is None else argv) if REMOTE.search(str(a))), None)
        if remote is not None:
            common.err.print(f"error: {remote}: remote URLs (s3://, gs://, http://, …) are not supported; dyembed "
                             "reads and writes local paths: copy the file here first (e.g. `aws s3 cp`)", markup=False)
            sys.exit(2)
        try:
            code = super().main(*args, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # `dyembed` / `dyembed state` alone: the help, exit 2
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            where = f"; see `{exc.ctx.command_path} --help`" if getattr(exc, "ctx", None) is not None else ""
            text = " ".join(exc.format_message().split()).rstrip(".")
            common.err.print(f"error: {text}{where}", markup=False)
            sys.exit(exc.exit_code)
        except typer.Abort:
            common.err.print("error: aborted", markup=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="dyembed",
    cls=OneLineErrors,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or notes: only warnings and errors (stderr) and --json output.")] = False,
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
    common.out.quiet = quiet  # every table goes through `out`: --quiet silences them all at once


for module in (synth_cmd, preprocess_cmd, encode_cmd, train_cmd, evaluate_cmd, update_cmd, state_cmd, export_cmd, demo_cmd):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
