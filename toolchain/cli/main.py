"""Root of the `edgectl` CLI. Each command group lives in its own module; this file only adds them.

Heavy libraries are imported inside the commands, so `edgectl --help` starts fast.
"""

from __future__ import annotations

import sys

import typer

from toolchain.cli import (
    build,
    bundles,
    demo,
    devices,
    export,
    fleet,
    keys,
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


def _print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    from toolchain.cli.output import err_console

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line plus a hint and a non-zero exit, never a traceback."""
    from pydantic import ValidationError

    from edgebundle.errors import BundleError
    from targets import ProfileError, UnknownTargetError
    from toolchain.errors import EdgectlError

    try:
        app(args=argv, prog_name="edgectl")  # standalone: usage errors and --help exit through SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except EdgectlError as exc:
        if getattr(exc, "attempts", None):
            from toolchain.cli.output import print_attempts

            print_attempts(exc.attempts)
        _print_error(exc.message, exc.hint)
        return exc.exit_code
    except BundleError as exc:
        _print_error(str(exc), None)
        return 4
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
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
