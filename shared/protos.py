"""Export the contract to protos/: a JSON Schema per message model and the AsyncAPI document of every
service's subjects. `python -m shared.protos` writes them; `--check` fails when the committed files
are stale (the test suite runs the same comparison)."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

from shared import __version__, messages, subjects
from shared.messages.base import Message
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def message_models() -> list[type[Message]]:
    """Every concrete message model defined under shared.messages."""
    for info in pkgutil.iter_modules(messages.__path__):
        importlib.import_module(f"{messages.__name__}.{info.name}")
    found: dict[str, type[Message]] = {}
    stack = [Message]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith(messages.__name__):
                if sub.__name__ in found and found[sub.__name__] is not sub:
                    raise RuntimeError(f"two message models named {sub.__name__}")
                found[sub.__name__] = sub
    return [found[name] for name in sorted(found)]


def asyncapi_document() -> dict:
    from faststream.specification import AsyncAPI

    from shared.service import Runtime, build_broker

    settings = Settings.model_construct()  # defaults only: the document must not depend on the environment
    brokers = []
    for name in subjects.SERVICES:
        spec = importlib.import_module(f"services.{name}.app").SPEC
        brokers.append(build_broker(spec, Runtime(name=name, settings=settings)))
    document = AsyncAPI(*brokers, title="Railyard bus", version=__version__, schema_version="3.0.0")
    data = json.loads(document.to_specification().to_json())
    _attach_payload_schemas(data)
    return data


def _attach_payload_schemas(document: dict) -> None:
    """Subscribers take the raw body (so a bad one gets a typed error reply rather than silence); their
    channel titles name the model, so the payload schemas are filled in from the models here."""
    models = {m.__name__: m for m in message_models()}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for key in list(schemas):
        parts = key.split(":")
        if len(parts) >= 2 and parts[-2:] == ["Message", "Payload"] and parts[-3] in models:
            schema = models[parts[-3]].model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[key] = schema
        elif parts[-2:] == ["Message", "Payload"] and set(schemas[key]) == {"title"}:
            # a raw body its title names no model of (shared/consumers.py's subscribers take the bytes and decode
            # them themselves, so that one that does not decode is theirs to settle): a JSON object
            schemas[key] = {**schemas[key], "additionalProperties": True, "type": "object"}


def render() -> dict[Path, str]:
    """What protos/ should contain, path -> text."""
    files: dict[Path, str] = {}
    for model in message_models():
        schema = model.model_json_schema()
        files[PROTOS / "schemas" / f"{model.__name__}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    files[PROTOS / "asyncapi.json"] = json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
    return files


def stale_files() -> list[str]:
    wanted = render()
    problems = [str(p.relative_to(ROOT)) for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    existing = set((PROTOS / "schemas").glob("*.json")) if (PROTOS / "schemas").exists() else set()
    problems += [f"{p.relative_to(ROOT)} (no longer a message)" for p in sorted(existing - set(wanted))]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path}")
        return 1 if stale else 0
    files = render()
    (PROTOS / "schemas").mkdir(parents=True, exist_ok=True)
    for old in (PROTOS / "schemas").glob("*.json"):
        if old not in files:
            old.unlink()
    for path, text in files.items():
        path.write_text(text)
    print(f"wrote {len(files)} files under {PROTOS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
