"""The `railyard` command: `up`, `status` and `down` for the embedded stack, `dead-letters` for an operator."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from shared import __version__

if TYPE_CHECKING:
    from shared.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    # imported here, not at the top: every `railyard` command of the client loads this module as its plugin, and
    # pydantic and the settings tree cost it ~0.1 s (0.3 s loaded) of a 0.4 s start when it reads no setting
    from shared.settings import load_settings

    if getattr(args, "data_dir", None):
        os.environ["RAILYARD_STACK__DATA_DIR"] = args.data_dir
    return load_settings("railyard")  # every bad setting, named, and exit 2


def cmd_up(args: argparse.Namespace) -> int:
    from shared.embedded.stack import up

    return up(_settings(args))


def cmd_status(args: argparse.Namespace) -> int:
    from shared.embedded.stack import pid_alive, read_state

    settings = _settings(args)
    data_dir = settings.stack.data_dir.expanduser().resolve()
    state = read_state(data_dir)
    if not state or not pid_alive(state.get("supervisor_pid", 0)):
        print(f"railyard: no stack is running for {data_dir} (`railyard up` starts one; --data-dir names"
              " another data directory)")
        return 1
    print(f"stack {state['version']} (supervisor pid {state['supervisor_pid']}), data in {state['data_dir']}")
    health: dict = {}
    try:
        with urllib.request.urlopen(f"{state['api_url']}/health", timeout=5) as response:  # noqa: S310
            health = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        health = json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        health = {}
    services = health.get("services", {})
    all_ok = True
    print(f"{'component':<18}{'kind':<9}{'pid':<9}{'process':<9}{'health':<10}restarts")
    for name, info in state["components"].items():
        running = bool(info["pid"]) and pid_alive(info["pid"])
        if info["kind"] == "service":
            status = services.get(name, {}).get("status", "unknown")
        else:
            status = "ok" if running else "down"
        all_ok &= running and status == "ok"
        print(f"{name:<18}{info['kind']:<9}{info['pid'] or '-':<9}{'running' if running else 'dead':<9}"
              f"{status:<10}{info['restarts']}")
    print(f"API {state['api_url']}  docs {state['api_url']}/docs")
    return 0 if all_ok else 1


def cmd_down(args: argparse.Namespace) -> int:
    from shared.embedded.stack import pid_alive, read_state

    settings = _settings(args)
    data_dir = settings.stack.data_dir.expanduser().resolve()
    state = read_state(data_dir)
    pid = (state or {}).get("supervisor_pid", 0)
    if not pid or not pid_alive(pid):
        print(f"railyard: no stack is running for {data_dir}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        print(f"railyard: the stack (pid {pid}) did not stop within {args.timeout:g}s", file=sys.stderr)
        return 1
    print("railyard: stopped")
    return 0


CLIENT_NEEDED = ("railyard: {command} works on railyard-client's credentials file: install railyard-client (`pip"
                 " install ./client`, the container image has it), then run `railyard {command}`")


LOGIN_EXIT = ("exit 0 once signed in with the tokens saved; 1 when not: the credentials refused, the server"
              " unreachable, the tokens not saved (the client's `railyard login` says 3 or 5 for the first two); 2 with"
              " nothing to sign in with (no password or client secret given, none in the embedded stack's secrets; an"
              " empty --username or --password, which no user has), bad usage, or without railyard-client; 130"
              " interrupted")


def _login_code(exc) -> int:
    """LOGIN_EXIT's code of the client's error: 2 for nothing to sign in with (ConfigurationError), else 1."""
    from railyard_client.errors import ConfigurationError

    return 2 if isinstance(exc, ConfigurationError) else 1


def cmd_login(args: argparse.Namespace) -> int:
    """Sign in and keep the tokens in the client's credentials file for `railyard token` and the client's commands:
    the client's `railyard login` itself (railyard_client.cli), not a copy of it, with this module's exit codes
    (LOGIN_EXIT). Its defaults are the client's: each option, else its RAILYARD_CLIENT_* variable, else the embedded
    stack's (its secrets and running stack's URL in --data-dir, RAILYARD_STACK__DATA_DIR, else .railyard), the URL
    at last http://127.0.0.1:18000. Until session 42 this was a second implementation on shared.client's
    RailyardClient, whose defaults differed (no RAILYARD_CLIENT_* variable read, the client id required, the gateway's
    settings for the URL) and which said an unwritable credentials file and an unreachable server its own way."""
    try:
        from railyard_client import cli as client_cli
    except ImportError:
        print(CLIENT_NEEDED.format(command="login"), file=sys.stderr)
        return 2
    forwarded = [part for flag, value in (("--url", args.url), ("--username", args.username),
                                          ("--password", args.password), ("--client-id", args.client_id),
                                          ("--client-secret", args.client_secret), ("--data-dir", args.data_dir))
                 if value is not None for part in (flag, value)]
    return client_cli.main(["login", *forwarded], codes=_login_code)


TOKEN_EXIT = ("exit 0 with the token on stdout, also when a refreshed token could not be saved (said on stderr: the"
              " next token needs a `railyard login` once the file can be written); 1 when no valid token could be"
              " had (not logged in, the refresh refused, the server unreachable: the client's `railyard token` says 3"
              " or 5); 2 bad usage or without railyard-client; 130 interrupted")
TOKEN_SOURCES = ("The token is the credentials file's (RAILYARD_CLIENT_CREDENTIALS, else"
                 " $XDG_CONFIG_HOME/railyard/credentials.json), refreshed there; the client's variables come first:"
                 " RAILYARD_CLIENT_TOKEN is printed as it is, RAILYARD_CLIENT_USERNAME and RAILYARD_CLIENT_PASSWORD"
                 " sign in (with RAILYARD_CLIENT_URL, RAILYARD_CLIENT_ID and RAILYARD_CLIENT_SECRET) without the"
                 " file, and RAILYARD_CLIENT_URL names the server")


def cmd_token(args: argparse.Namespace) -> int:
    """Print a valid access token (refreshing it when needed), e.g. `TOKEN=$(railyard token)`: the client's
    `railyard token` itself (railyard_client.cli), not a copy of it, with this module's exit codes (TOKEN_EXIT).

    A refreshed token that could not be saved (a full disk, a read-only folder) is printed all the same, valid for
    its lifetime, with the failure on stderr, and exits 0. Until session 42 this was a second implementation on
    shared.client's RailyardClient, which read only the file (not the client's RAILYARD_CLIENT_* variables), said an
    unreachable server with a traceback, and had to be kept in step with the client's by hand (session 41 fixed the
    unsaved token in both, 09d31676 and 4c205e61)."""
    try:
        from railyard_client import cli as client_cli
    except ImportError:
        print(CLIENT_NEEDED.format(command="token"), file=sys.stderr)
        return 2
    status = client_cli.main(["token"])
    return status if status in (0, 130) else 1  # 130: interrupted, as every command


def cmd_logout(args: argparse.Namespace) -> int:
    """End the saved session at its server and remove its tokens: the client's `railyard logout` itself
    (railyard_client.cli), not a copy of it, on the file `login` and `token` here use (the client's,
    RAILYARD_CLIENT_CREDENTIALS first). Without the client installed (a server-only install), exit 2 saying so."""
    try:
        from railyard_client.cli import main as client_main
    except ImportError:
        print(CLIENT_NEEDED.format(command="logout"), file=sys.stderr)
        return 2
    return client_main(["logout"])


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """The durable event consumers' dead letters: list them, replay one (shared/dead_letters.py)."""
    from shared.lean_imports import decline_unused

    # before nats: it imports aiohttp (its WebSocket transport; the bus is nats://) whenever it is installed, ~40 % of
    # the command's start (shared/lean_imports.py); the command reads no tables (pandas) and serves nothing either
    decline_unused()
    import asyncpg
    import nats.errors

    from shared.dead_letters import run, stack_note

    settings = _settings(args)
    try:
        return run(args, settings)
    except (OSError, TimeoutError, asyncpg.PostgresError, nats.errors.Error) as exc:  # one line, no traceback
        # the exit statuses of `railyard` (README): 3 wrong credentials, 5 unreachable, else 1
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) or "authorization violation" in str(
                exc).lower():
            status = 3
        elif isinstance(exc, (OSError, nats.errors.NoServersError)) and not isinstance(exc, nats.errors.TimeoutError):
            status = 5
        else:
            status = 1
        # could not connect or log in with the defaults: where the stack's secrets were looked for, in the same line
        note = stack_note(settings) if status in (3, 5) else ""
        print(f"railyard: {type(exc).__name__}: {exc}".splitlines()[0] + note, file=sys.stderr)
        return status


def build_parser() -> argparse.ArgumentParser:
    """The server's commands (`python -m shared.cli ...`); `railyard` shows them through `register`."""
    parser = argparse.ArgumentParser(prog="railyard", description="Railyard MLOps platform")
    parser.add_argument("--version", action="version", version=f"railyard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("up", cmd_up, "Start the embedded stack and every service (foreground; Ctrl-C or `railyard down` stops)"),
        ("status", cmd_status, "Show every component of the running stack (exit 1 if any is not ok)"),
        ("down", cmd_down, "Stop the running stack"),
        ("login", cmd_login, "Sign in: the client's `railyard login` (defaults: the RAILYARD_CLIENT_* variables, else"
                             " the embedded stack's admin user and client)"),
        ("token", cmd_token, "Print a valid access token for curl and scripts"),
    ):
        cmd = sub.add_parser(name, help=text, description=f"{text}.")
        if name != "token":  # the token is the credentials file's or the variables' (TOKEN_SOURCES), no stack's
            cmd.add_argument("--data-dir", metavar="DIR",
                             help="data directory (default RAILYARD_STACK__DATA_DIR, else .railyard)")
        cmd.set_defaults(func=func)
        if name == "down":
            cmd.add_argument("--timeout", type=float, default=90.0, metavar="SECONDS",
                             help="how long to wait for every process to stop (default 90)")
        if name == "login":
            for flag in ("--url", "--username", "--password", "--client-id", "--client-secret"):
                cmd.add_argument(flag)
            cmd.epilog = f"{LOGIN_EXIT[0].upper()}{LOGIN_EXIT[1:]}."
        if name == "token":
            cmd.epilog = f"{TOKEN_SOURCES}. {TOKEN_EXIT[0].upper()}{TOKEN_EXIT[1:]}."
    text = "Sign out: end the saved session at its server and remove its tokens (the client's `railyard logout`)"
    sub.add_parser("logout", help=text, description=f"{text}.").set_defaults(func=cmd_logout)
    from shared.dead_letters import add_arguments  # argparse only: nothing heavy

    text = "List the event consumers' dead letters, or replay one to the consumer that gave up on it"
    cmd = sub.add_parser("dead-letters", help=text, description=f"{text}.")
    cmd.set_defaults(func=cmd_dead_letters)
    add_arguments(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def register(group) -> None:
    """Plugin of the client's `railyard` command (entry point group `railyard.commands`): adds every command of
    `build_parser()` the client does not have itself (`up`, `status`, `down`, and any added later), each
    forwarding its arguments, `--help` included, to this module's parser."""
    import click

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    for name, subparser in subparsers.choices.items():
        if name in group.commands:
            continue
        options = [f"- `{', '.join(a.option_strings)} {a.metavar or a.dest.upper()}`: {a.help}"
                   for a in subparser._actions if a.option_strings and a.help != argparse.SUPPRESS
                   and "-h" not in a.option_strings]
        text = f"{helps.get(name) or name} (a server command: `railyard {name} --help`)."
        if options:  # for docs/sdk.md; `railyard NAME --help` itself is argparse's
            text += "\n\n" + "\n".join(options)

        def forward(args: tuple[str, ...], _name: str = name) -> None:
            raise click.exceptions.Exit(main([_name, *args]))

        group.add_command(click.Command(
            name, callback=forward, help=text,
            params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)], add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True}))


if __name__ == "__main__":
    sys.exit(main())
