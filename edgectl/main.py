"""Root of the `edgectl` CLI. Each command group lives in its own module; this file only adds them.

Heavy libraries are imported inside the commands, so `edgectl --help` starts fast.
"""

from __future__ import annotations

import sys

import typer

from edgectl import (
    build,
    bundles,
    demo,
    devices,
    export,
    fleet,
    keys,
    optimize,
    registry,
    retrain,
    rollout,
    targets,
)

app = typer.Typer(
    name="edgectl",
    help="Build, validate, sign and ship ML models for edge and mobile devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
targets.register(app)
build.register(app)
bundles.register(app)
keys.register(app)
export.register(app)
demo.register(app)
fleet.register(app)
rollout.register(app)
devices.register(app)
registry.register(app)
retrain.register(app)
optimize.register(app)


def _print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    from edgectl.output import err_console

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def _click_exceptions():
    """Click's exception classes: Typer vendors its own Click (typer._click), older Typers use click."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - Typer before it vendored Click
        from click import exceptions
    return exceptions


def _usage_error(exc) -> int:
    """A Click error (bad value, missing option, unknown command) in the same form as every other error."""
    exceptions = _click_exceptions()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, exceptions.NoArgsIsHelpError) and ctx is not None:  # a bare group: its help
        help_text = ctx.get_help()
        if help_text:
            print(help_text)
        return exc.exit_code
    where = ctx.command_path if ctx is not None else "edgectl"
    message = " ".join(exc.format_message().split())
    _print_error(message[:1].lower() + message[1:], f"see '{where} --help'")
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line plus a hint and a non-zero exit, never a traceback."""
    from pydantic import ValidationError

    from edgebase.errors import HintedError
    from edgebundle.errors import BundleError
    from targets import ProfileError, UnknownTargetError
    from toolchain.errors import EdgectlError

    click = _click_exceptions()
    try:
        # not standalone: usage errors come here to be printed as error/hint; --help and Exit return a code
        code = app(args=argv, prog_name="edgectl", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.ClickException as exc:
        return _usage_error(exc)
    except typer.Abort:
        _print_error("aborted", None)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except EdgectlError as exc:
        if getattr(exc, "attempts", None):
            from edgectl.output import print_attempts

            print_attempts(exc.attempts)
        _print_error(exc.message, exc.hint)
        return exc.exit_code
    except BundleError as exc:
        _print_error(str(exc), None)
        return 4
    except HintedError as exc:  # the exporters' and any other family's: message, hint, its exit code
        _print_error(exc.message, exc.hint)
        return exc.exit_code
    except (UnknownTargetError, ProfileError) as exc:  # their message carries the hint
        _print_error(str(exc).splitlines()[0], None)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        _print_error(f"invalid {where}: {first['msg']}", "see 'edgectl COMMAND --help'")
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted", None)
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
