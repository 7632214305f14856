"""Generate the SDK and CLI reference (`docs/sdk.md`) from the code: every public class, method and property with
its signature and docstring, the errors, the environment contract and every `railyard` command.

    python -m railyard_client._docgen docs/sdk.md     # write (make docs)
    python -m railyard_client._docgen --check docs/sdk.md
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

import railyard_client
from railyard_client import errors, session, tasks

CLASSES = ("Client", "Workspace", "Model", "ModelVersion", "Registry", "Pipeline", "Deployment", "Assay",
           "Connection", "User")
FUNCTIONS = ("in_task", "task_args")
CONSTRUCTED = ("Client", "Lineage", "Orchestrations")  # the other objects are handed out by the client


def documented_classes() -> list[str]:
    """Every class the package exports (errors aside): the curated order first, then any others by name."""
    exported = [n for n in railyard_client.__all__ if isinstance(getattr(railyard_client, n), type)
                and not issubclass(getattr(railyard_client, n), Exception)]
    return [n for n in CLASSES if n in exported] + sorted(n for n in exported if n not in CLASSES)


def exported_warnings() -> list[str]:
    """The warning classes the package exports (TokensNotSaved), by name."""
    return sorted(n for n in railyard_client.__all__ if isinstance(getattr(railyard_client, n), type)
                  and issubclass(getattr(railyard_client, n), Warning))


def public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """The documented members of a class: its constructor (for classes users build), then public methods and
    properties (inherited from Resource included), in source order."""
    if cls.__name__ in CONSTRUCTED:
        yield "__init__", cls.__init__
    seen = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property) or inspect.isfunction(member):
                seen.add(name)
                yield name, member


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def format_signature(func: Any) -> str:
    """`(a: int, *, b: str = 'x') -> T` without `self` and with annotations as written in the source."""
    signature = inspect.signature(func)
    parts, star_done = [], False
    for param in signature.parameters.values():
        if param.name in ("self", "cls"):
            continue
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = ("**" if param.kind is param.VAR_KEYWORD else "*" if param.kind is param.VAR_POSITIONAL else "")
        text += param.name
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        star_done |= param.kind is param.VAR_POSITIONAL
        parts.append(text)
    returns = signature.return_annotation
    tail = "" if returns is signature.empty or returns in ("None", None) else f" -> {_annotation(returns)}"
    return f"({', '.join(parts)}){tail}"


def _signature(name: str, member: Any, owner: str) -> str:
    if isinstance(member, property):
        annotation = inspect.signature(member.fget).return_annotation
        kind = "" if annotation is inspect.Signature.empty else f": {_annotation(annotation)}"
        return f"{owner}.{name}{kind}  # property"
    return f"{owner}{format_signature(member)}" if name == "__init__" else f"{owner}.{name}{format_signature(member)}"


def heading(owner: str, name: str) -> str:
    """The Markdown heading a member is documented under (what the docs test looks for)."""
    return f"### {owner}" if name == "__init__" else f"### {owner}.{name}"


def _doc(member: Any) -> str:
    target = member.fget if isinstance(member, property) else member
    return inspect.cleandoc(target.__doc__ or "")


def _commands(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def render() -> str:
    """The whole reference page."""
    from railyard_client.cli import EXIT_CODES, build_command

    app = build_command()  # with the installed plugins' commands, however often this process loaded them

    lines = ["# Python SDK and `railyard` command reference", "",
             "Generated from the code by `make docs` (`python -m railyard_client._docgen docs/sdk.md`); a unit test "
             "fails when this page is stale or a public method lacks a docstring. Distribution `railyard-client` "
             f"{railyard_client.__version__} (folder `client/`), package `railyard_client`.", "",
             inspect.cleandoc(railyard_client.__doc__ or ""), ""]
    for name in documented_classes():
        cls = getattr(railyard_client, name)
        lines += [f"## {name}", "", inspect.cleandoc(cls.__doc__ or ""), ""]
        for member_name, member in public_members(cls):
            lines += [heading(name, member_name), "", "```python", _signature(member_name, member, name), "```", "",
                      _doc(member), ""]
    lines += ["## Task runs", ""]
    for name in FUNCTIONS:
        func = getattr(railyard_client, name)
        lines += [f"### {name}", "", "```python", f"{name}{format_signature(func)}", "```", "", _doc(func), ""]
    lines += [inspect.cleandoc(tasks.__doc__ or ""), "", "## Credentials and configuration", "",
              inspect.cleandoc(session.__doc__ or ""), "", "## Errors", "", "```",
              inspect.cleandoc(errors.__doc__ or ""), "```", ""]
    for name in sorted(n for n in dir(errors) if isinstance(getattr(errors, n), type)
                       and issubclass(getattr(errors, n), errors.RailyardError)):
        lines += [f"- `{name}`: {_doc(getattr(errors, name))}"]
    lines += ["", "Warnings (given with Python's `warnings`, not raised; exported by `railyard_client` as the errors"
              " are):", ""]
    lines += [f"- `{name}`: {_doc(getattr(railyard_client, name))}" for name in exported_warnings()]
    lines += ["", "## The `railyard` command", "",
              "`--help` on every command; `--json` prints JSON instead of a table. A table's empty cell is a value "
              "that is none (JSON's `null`) or a key the row lacks; the tables of data (inference results, logged "
              "rows, a dataset's rows) print a null value as `null`. Installed with the server, "
              "`railyard up`, `status` and `down` (the server's commands) appear too.", "", "Exit codes:", ""]
    lines += [f"- `{code}` {text}" for code, text in EXIT_CODES.items()]
    lines += [""]
    for path, command in _commands(app, "railyard"):
        with click.Context(command, info_name=path) as ctx:
            usage = command.collect_usage_pieces(ctx)
            lines += [f"### `{path}`", "", f"`{path} {' '.join(usage)}`", "",
                      inspect.cleandoc(command.help or ""), ""]
            for param in command.get_params(ctx):
                record = param.get_help_record(ctx)
                if not record or record[0] in ("-h, --help", "--help"):
                    continue
                # an option without a help text is listed all the same (`--help` shows it): it was left out, so
                # `railyard tasks runs --status` was missing here
                if record[1] or isinstance(param, click.Option):
                    lines += [f"- `{record[0]}`" + (f": {record[1]}" if record[1] else "")]
            lines += [""]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def missing_docstrings() -> list[str]:
    """Public SDK members without a docstring."""
    missing = []
    for name in documented_classes():
        cls = getattr(railyard_client, name)
        if not (cls.__doc__ or "").strip():
            missing.append(name)
        for member_name, member in public_members(cls):
            if not _doc(member):
                missing.append(f"{name}.{member_name}")
    missing += [name for name in FUNCTIONS if not _doc(getattr(railyard_client, name))]
    return missing


def main(argv: list[str]) -> int:
    """Write the page to the given path, or with --check say whether it is current."""
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m railyard_client._docgen [--check] docs/sdk.md", file=sys.stderr)
        return 2
    path = Path(paths[0])
    page = render()
    if check:
        current = path.is_file() and path.read_text() == page
        print(f"{path} is {'current' if current else 'stale: run `make docs`'}")
        return 0 if current else 1
    path.write_text(page)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
