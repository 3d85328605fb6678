"""`edgectl-agent`: run the agent, enroll the device, install a bundle from a file, show the status.

A user error prints one `error:` line and one `hint:` line on stderr and
exits non-zero (2 for bad usage or configuration, 1 otherwise). argparse,
not Typer: the agent starts on small devices and imports as little as it can.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from device_agent.errors import AgentError, ConfigError

log = logging.getLogger("device_agent")
TOKEN_ENV = "EDGECTL_ENROLL_TOKEN"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"error: {message}\nhint: run '{self.prog} --help'\n")
        raise SystemExit(2)


class _Redact(logging.Filter):
    """Replace every known secret in a log record (message and traceback) with ***."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._clean(record.getMessage()), None
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


REDACT = _Redact()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):  # request lines at INFO; ours are enough
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _config(args: argparse.Namespace):
    from device_agent.config import load_config

    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from device_agent.agent import Agent

    config = _config(args)
    setup_logging(config.log_level)
    agent = Agent(config)
    REDACT.secrets = agent.identity.secrets()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.request_stop())
    try:
        agent.start()
        agent.wait()
    finally:
        agent.close()
    return 0


def _read_token(token_file: str | None) -> str:
    if token_file == "-":
        token = sys.stdin.readline()
    elif token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AgentError(
                f"cannot read token file {token_file}: {exc.strerror or exc}", hint="check the path"
            ) from None
    else:
        token = os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if not token:
        raise AgentError(
            "no enrollment token given",
            hint=f"pass --token-file FILE (or - for stdin), or set {TOKEN_ENV}; never the token itself as an argument",
        )
    return token


def _hardware() -> dict[str, str]:
    import platform

    facts = {"machine": platform.machine(), "os": platform.platform(terse=True)}
    model = Path("/proc/device-tree/model")
    if model.is_file():
        facts["model"] = model.read_bytes().rstrip(b"\x00").decode(errors="replace")[:120]
    return facts


def cmd_enroll(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from device_agent.identity import write_credentials
    from device_agent.registry_client import enroll
    from edgewire import EnrollRequest

    config = _config(args)
    setup_logging(config.log_level)
    if config.registry is None:
        raise ConfigError(f"config {args.config} has no registry section", hint="set registry.url to enroll")
    path = config.credentials_path
    if path.exists() and not args.force:
        raise AgentError(
            f"credentials file {path} already exists; this device is enrolled",
            hint="pass --force to enroll again (the old device token stops being used)",
        )
    token = _read_token(args.token_file)
    REDACT.secrets = [token]
    try:
        request = EnrollRequest(
            token=token,
            name=args.name or config.device.id,
            target=config.device.target,
            tags=config.device.tags,
            hardware=_hardware(),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise AgentError(
            f"invalid enrollment request: {where}: {first.get('msg')}", hint="check the token and --name"
        ) from None
    response = enroll(config.registry.url, request, config.registry.timeout_s, config.registry.ca_file)
    write_credentials(path, response, force=args.force)
    print(
        f"enrolled as {response.device} in fleet {response.fleet}; credentials written to {path} (mode 0600)"
    )
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from device_agent.agent import Agent
    from device_agent.update import install_local

    config = _config(args)
    setup_logging(config.log_level)
    bundle = Path(args.bundle)
    if not bundle.is_file():
        raise AgentError(
            f"bundle archive {bundle} does not exist",
            hint="pass the .edgebundle file written by edgectl build",
        )
    agent = Agent(config)
    try:
        agent.open()
        assert agent.updater is not None
        record = install_local(agent.updater, bundle)
    finally:
        agent.close()
    if record.state != "SUCCEEDED":
        raise AgentError(
            f"install ended {record.state}: {record.reason}", hint="the model served before is unchanged"
        )
    print(f"installed {record.desired.model} v{record.desired.version} into slot {record.slot}")
    return 0


def _fetch_status(config) -> dict | None:
    import urllib.error
    import urllib.request

    if not config.http.enabled:
        return None
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::", "") else config.http.host
    try:
        with urllib.request.urlopen(f"http://{host}:{config.http.port}/v1/status", timeout=3) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from device_agent.state import AgentPaths, StateStore

    config = _config(args)
    status = _fetch_status(config)
    running = status is not None
    if status is None:
        state_file = AgentPaths(config.data_dir).state_file
        if not state_file.exists():
            raise AgentError(
                f"the agent is not running and {state_file} does not exist",
                hint="start it with edgectl-agent run --config ...",
            )
        state = StateStore(state_file).load()
        active = state.serving_info()
        status = {
            "model": {"name": active.name, "version": active.version, "slot": state.active}
            if active
            else None,
            "active_slot": state.active,
            "slots": {k: v.model_dump() if v else None for k, v in state.slots.items()},
            "update": state.update.model_dump(mode="json", exclude={"desired"}) if state.update else None,
        }
    status["running"] = running
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    model = status.get("model")
    print(f"agent: {'running' if running else 'not running'}")
    print(
        f"model: {model['name']} v{model['version']} (slot {model['slot']})"
        if model
        else "model: none installed"
    )
    update = status.get("update")
    if update:
        reason = f" ({update['reason']})" if update.get("reason") else ""
        print(f"update: {update['update_id']} {update['state']}{reason}")
    if running:
        queue = status["queue"]
        print(
            f"mqtt: {'connected' if status['mqtt']['connected'] else 'not connected'}; "
            f"queue: {queue['pending']} pending, {queue['dropped_total']} dropped"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from device_agent import agent_version

    parser = _Parser(prog="edgectl-agent", description="The edgectl device agent.")
    parser.add_argument("--version", action="version", version=f"edgectl-agent {agent_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", "-c", required=True, help="the agent's YAML configuration file")
        return sub

    command("run", "Serve the model, report telemetry and apply updates until stopped.").set_defaults(
        func=cmd_run
    )
    enroll = command(
        "enroll", "Exchange a one-time token for this device's credentials (written with mode 0600)."
    )
    enroll.add_argument(
        "--token-file", help=f"file holding the one-time token ('-': stdin); default ${TOKEN_ENV}"
    )
    enroll.add_argument("--name", help="the device id to ask for (default: device.id of the config)")
    enroll.add_argument("--force", action="store_true", help="replace existing credentials")
    enroll.set_defaults(func=cmd_enroll)
    install = command("install", "Verify, install and health-check a bundle archive from a file.")
    install.add_argument("bundle", help="the .edgebundle archive")
    install.set_defaults(func=cmd_install)
    status = command("status", "Show the model served and the update state.")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AgentError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
