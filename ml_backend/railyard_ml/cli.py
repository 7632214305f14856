"""The `railyard-ml` command: `init` a backend folder from a script, `start` it, `deploy` it.

    railyard-ml init my_backend --script examples/text_classifier/text_classifier.py
    railyard-ml start my_backend --port 9090 [--basic-auth-user u --basic-auth-pass p]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from railyard_ml.store import ModelDirInUse, claim_model_dir

if TYPE_CHECKING:
    from railyard_ml.model import LabelStudioMLBase

# The model and the app (starlette, uvicorn) are imported by the commands that load a model (start, deploy), not here:
# `railyard-ml init` and `--help` start without them (~0.45 -> ~0.2 s of CPU each; typer itself imports pydantic to
# coerce a command's parameters, --help needs none).
MODEL_BASE = "LabelStudioMLBase"  # the base class find_model_classes looks for, by name (railyard_ml.model's)
CONFIG = "railyard-ml.json"
TEMPLATES = Path(__file__).parent / "templates"

cli = typer.Typer(help="Turn a Label Studio ML backend class into a server (and run it).", no_args_is_help=True,
                  add_completion=False)
deploy_cli = typer.Typer(help="Deploy a backend folder somewhere.", no_args_is_help=True)
cli.add_typer(deploy_cli, name="deploy")


def find_model_classes(script: Path) -> list[str]:
    """Classes in `script` that extend LabelStudioMLBase (directly or through another class of the script),
    read from its syntax tree: nothing of the script runs."""
    tree = ast.parse(script.read_text(), filename=str(script))
    bases: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases[node.name] = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name not in found and parents & ({MODEL_BASE} | found):
                found.add(name)
                changed = True
    return sorted(found)


NEEDS = ("railyard-ml serves a class of the script that extends LabelStudioMLBase (`from railyard_ml import "
         "LabelStudioMLBase`, or label_studio_ml.model's), directly or through another class of the same script, "
         "and defines predict(self, tasks, context=None, **kwargs) (and, to train, fit(self, event, data, "
         "**kwargs), or label-studio-ml 1.x's fit(self, annotations, workdir=None, **kwargs)): add one, e.g. "
         "`class MyModel(LabelStudioMLBase):` with your predict, or give --script the file that has it")
"""What `init` looks for in a script, said when it finds no such class (docs/ml-backend.md, railyard-ml init)."""


def _classes_said(script: Path) -> str:
    """The script's top-level classes with the bases they were read with, for the refusal of a script that has no
    LabelStudioMLBase class: a class with predict but the wrong base shows why it was not taken."""
    tree = ast.parse(script.read_text(), filename=str(script))
    found = [f"{node.name}({', '.join(ast.unparse(b) for b in node.bases)})" if node.bases else node.name
             for node in tree.body if isinstance(node, ast.ClassDef)]
    return f"its classes: {', '.join(found)}" if found else "it defines no class"


def fail(message: str) -> None:
    typer.echo(f"railyard-ml: {message}", err=True)
    raise typer.Exit(2)


def _label_config_text(path: Path) -> str:
    """The --label-config file's text: UTF-8 (a byte order mark is dropped), as Label Studio stores configs; a file
    in another encoding or one that cannot be read exits 2 naming it (it was a UnicodeDecodeError naming no file)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        fail(f"{path}: the labeling config must be UTF-8 text (byte {exc.start} is not: {exc.reason}); "
             "save it as UTF-8")
    except OSError as exc:
        fail(f"{path}: cannot read the labeling config ({exc.strerror or exc})")
    raise AssertionError("unreachable")  # fail() exits


@cli.command()
def init(
    folder: Annotated[Path, typer.Argument(help="the backend folder to create")],
    script: Annotated[str, typer.Option("--script", "--from", help="the model script, optionally script.py:Class")],
    force: Annotated[bool, typer.Option(help="replace the folder if it exists")] = False,
) -> None:
    """Create a runnable backend folder: the script, its server entry, requirements and a Dockerfile."""
    path, _, model_class = script.partition(":") if not Path(script).exists() else (script, "", "")
    source = Path(path)
    if not source.is_file() or source.suffix != ".py":
        fail(f"no Python script at {path}")
    try:
        classes = find_model_classes(source)
    except SyntaxError as exc:
        fail(f"{source} is not valid Python: {exc}")
    if not classes:
        # it said "has 0 classes ... (none): name one as x.py:ClassName", which naming one could not help
        fail(f"{source} has no class extending LabelStudioMLBase ({_classes_said(source)}). {NEEDS}")
    if model_class and model_class not in classes:
        fail(f"{source} has no class {model_class} extending LabelStudioMLBase (found: {', '.join(classes)}): "
             f"name one of those as {source}:ClassName")
    if not model_class:
        if len(classes) != 1:
            fail(f"{source} has {len(classes)} classes extending LabelStudioMLBase "
                 f"({', '.join(classes)}): name the one to serve as {source}:ClassName")
        model_class = classes[0]
    if folder.exists():
        if not force:
            fail(f"{folder} exists: remove it or pass --force")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy2(source, folder / source.name)
    requirements = ["railyard-ml"]
    sibling = source.parent / "requirements.txt"
    if sibling.is_file():
        requirements += [line.strip() for line in sibling.read_text().splitlines()
                         if line.strip() and not line.strip().startswith("#") and "railyard-ml" not in line
                         and "label-studio-ml" not in line]
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (folder / "_wsgi.py").write_text((TEMPLATES / "_wsgi.py.tmpl").read_text())
    (folder / "Dockerfile").write_text((TEMPLATES / "Dockerfile.tmpl").read_text())
    (folder / "README.md").write_text((TEMPLATES / "README.md.tmpl").read_text().format(
        model_class=model_class, script=source.name, image=folder.name.lower().replace("_", "-")))
    (folder / ".dockerignore").write_text("models/\n__pycache__/\n")
    (folder / CONFIG).write_text(json.dumps({"script": source.name, "model_class": model_class}, indent=2) + "\n")
    typer.echo(f"created {folder}: {model_class} from {source.name}; run it with `railyard-ml start {folder}`")


def backend_config(folder: Path) -> dict[str, str]:
    """A backend folder's railyard-ml.json (its script and model class), checked: a folder that is not one raises
    FileNotFoundError saying why. Nothing of the folder is imported."""
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a backend folder (no {CONFIG}): make one with `railyard-ml init`")
    # a config edited by hand: said with the file and how to remake it (was a JSONDecodeError or KeyError traceback,
    # or "module 'model' has no attribute 'Nope'")
    remake = f"make it again with `railyard-ml init {folder} --script <script>[:Class] --force`"
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, OSError) as exc:
        raise FileNotFoundError(f"{config_file} is not JSON ({exc}): {remake}") from None
    if not (isinstance(config, dict) and isinstance(config.get("script"), str)
            and isinstance(config.get("model_class"), str)):
        raise FileNotFoundError(f"{config_file} must name the \"script\" and its \"model_class\": {remake}")
    if not (folder / config["script"]).is_file():
        raise FileNotFoundError(f"{config_file} names the script {config['script']!r}, which is not in {folder}")
    return config


class ScriptImportFailed(ImportError):
    """The backend's script (or a module of its folder) did not import: not valid Python, or its code raised. Said on
    one line naming the file and line, a user's error like the others (`railyard-ml: ...`, exit 2), where it was a
    traceback with exit 1. An ImportError, so every command that refuses an unimportable script refuses it."""


MESSAGE_CHARS = 300  # of what the user's exception says, on one line


def _import_script(folder: Path, script: str):  # noqa: ANN202 - the user's module
    """Import the backend's script (its folder first on sys.path), or raise ScriptImportFailed saying why."""
    try:
        return importlib.import_module(Path(script).stem)
    except SyntaxError as exc:  # its own, or one of a module of the folder it imports: str() names file and line
        name = Path(exc.filename).name if exc.filename else script
        raise ScriptImportFailed(f"{name} is not valid Python: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's code at import (a missing package, a model file, a GPU)
        said = " ".join(str(exc).split())
        said = said if len(said) <= MESSAGE_CHARS else said[:MESSAGE_CHARS] + "..."
        where = [frame for frame in traceback.extract_tb(exc.__traceback__)
                 if frame.filename and Path(frame.filename).resolve().is_relative_to(folder)]
        at = f" ({Path(where[-1].filename).name}, line {where[-1].lineno})" if where else ""
        raise ScriptImportFailed(f"{script} raised {type(exc).__name__} when imported: {said or '(no message)'}"
                                 f"{at}") from None


def load_model_class(folder: Path) -> type[LabelStudioMLBase]:
    """Import the model class a backend folder names in its railyard-ml.json (the folder goes first on sys.path)."""
    from railyard_ml.model import LabelStudioMLBase

    config = backend_config(folder)
    config_file = folder / CONFIG
    remake = f"make it again with `railyard-ml init {folder} --script <script>[:Class] --force`"
    sys.path.insert(0, str(folder.resolve()))
    module = _import_script(folder.resolve(), config["script"])
    model_class = getattr(module, config["model_class"], None)
    if model_class is None:
        raise AttributeError(f"{config['script']} has no {config['model_class']!r} (the model_class {config_file} "
                             f"names): {remake}")
    if not (isinstance(model_class, type) and issubclass(model_class, LabelStudioMLBase)):
        raise TypeError(f"{config['model_class']} does not extend railyard_ml.LabelStudioMLBase: "
                        "change its import to `from railyard_ml import LabelStudioMLBase`")
    return model_class


def app_for(folder: str | Path, model_dir: str | Path | None = None, basic_auth_user: str | None = None,
            basic_auth_pass: str | None = None):  # noqa: ANN201 - a Starlette app
    """The ASGI app of a backend folder (model state in MODEL_DIR, default <folder>/models)."""
    folder = Path(folder)
    model_dir = Path(model_dir or os.getenv("MODEL_DIR") or folder / "models")
    os.environ.setdefault("MODEL_DIR", str(model_dir))  # 1.x examples read it for their checkpoints
    backend_config(folder)  # a folder that is not one fails here, before the web app is imported
    # the app before the model: load_model_class puts the folder first on sys.path, and a module of the folder named
    # like one the app imports (an html.py: starlette imports the standard library's) would be taken for it
    from railyard_ml.api import init_app

    return init_app(load_model_class(folder), basic_auth_user=basic_auth_user, basic_auth_pass=basic_auth_pass,
                    model_dir=model_dir)


def serve(folder: Path, host: str, port: int, basic_auth_user: str | None, basic_auth_pass: str | None,
          model_dir: Path | None, log_level: str) -> None:
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s")
    app = app_for(folder, model_dir, basic_auth_user, basic_auth_pass)
    # before listening: a second process on one model directory ends here with ModelDirInUse, not in the app's
    # start (a traceback from uvicorn's lifespan); the app claims it again, in this process
    release = claim_model_dir(app.state.backend.model_dir)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower())
    finally:
        release()


@cli.command()
def start(
    folder: Annotated[Path, typer.Argument(help="a folder made by `railyard-ml init`")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 to serve other machines)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535,
                                       help="TCP port, 1-65535; 0: any free one, uvicorn's line names it")] = 9090,
    basic_auth_user: Annotated[str | None, typer.Option(envvar="ML_SERVER_BASIC_AUTH_USER")] = None,
    basic_auth_pass: Annotated[str | None, typer.Option(envvar="ML_SERVER_BASIC_AUTH_PASS")] = None,
    model_dir: Annotated[Path | None, typer.Option(envvar="MODEL_DIR", help="where the model's state is kept")] = None,
    log_level: Annotated[str, typer.Option(envvar="LOG_LEVEL")] = "INFO",
) -> None:
    """Serve a backend folder to Label Studio."""
    if bool(basic_auth_user) != bool(basic_auth_pass):
        fail("basic auth needs both --basic-auth-user and --basic-auth-pass")
    try:
        serve(folder, host, port, basic_auth_user, basic_auth_pass, model_dir, log_level)
    except (FileNotFoundError, TypeError, ImportError, AttributeError, ModelDirInUse) as exc:
        fail(str(exc))


@deploy_cli.command("railyard")
def deploy_railyard(
    folder: Annotated[Path, typer.Argument(help="a folder made by `railyard-ml init`")],
    pipeline: Annotated[str | None, typer.Option(help="pipeline (and model) name; default: the folder's name")] = None,
    project: Annotated[str | None, typer.Option(help="whose state to ship when the backend serves several")] = None,
    label_config: Annotated[Path | None, typer.Option(help="labeling config XML, if Label Studio never set it")] = None,
    model_dir: Annotated[Path | None, typer.Option(envvar="MODEL_DIR")] = None,
    url: Annotated[str | None, typer.Option(envvar="RAILYARD_CLIENT_URL", help="Railyard's base URL")] = None,
    workspace: Annotated[str | None, typer.Option(help="workspace name or id (default: the client's)")] = None,
    username: Annotated[str | None, typer.Option(envvar="RAILYARD_CLIENT_USERNAME")] = None,
    password: Annotated[str | None, typer.Option(envvar="RAILYARD_CLIENT_PASSWORD")] = None,
    client_id: Annotated[str | None, typer.Option(envvar="RAILYARD_CLIENT_ID")] = None,
    client_secret: Annotated[str | None, typer.Option(envvar="RAILYARD_CLIENT_SECRET")] = None,
) -> None:
    """Deploy the backend's model to Railyard as a pipeline (a bring-your-own-predict step; see docs/ml-backend.md):
    its predictions are then served, logged and watched by Railyard. `fit` stays where the backend runs."""
    from railyard_ml.errors import InvalidLabelConfig
    from railyard_ml.railyard_step import check_label_config, package

    try:
        load_model_class(folder)
        config_text = _label_config_text(label_config) if label_config else None
        archive, shipped = package(folder, project, config_text, model_dir)
        if config_text is not None:  # one Label Studio never gave this backend: can its model use it?
            check_label_config(archive, config_text)
    except InvalidLabelConfig as exc:  # not XML, or a DOCTYPE: it was a traceback (exit 1)
        fail(f"{label_config}: {exc}" if label_config else str(exc))
    except (FileNotFoundError, TypeError, ImportError, AttributeError, ValueError) as exc:
        fail(str(exc))
    try:
        from railyard_client import Client, RailyardError
    except ImportError:
        fail("deploying needs the Railyard client: pip install railyard-client (client/ in a Railyard checkout)")
    name = (pipeline or folder.resolve().name).lower().replace("_", "-")
    try:
        client = Client(url, username=username, password=password, client_id=client_id,
                        client_secret=client_secret, workspace=workspace)
        version = client.upload_model(name, archive, framework="custom")
        deployed = client.build_pipeline(name).add_model_step(version).deploy()
    except RailyardError as exc:
        fail(f"could not deploy to Railyard: {exc}")
    typer.echo(f"deployed {shipped['model_class']} (project {shipped['project'] or '-'}, model version "
               f"{shipped['model_version'] or '-'}) as pipeline {name}: {deployed.url()}")


def port_number(text: str) -> int:
    """A TCP port, 1-65535, or 0 for any free one (uvicorn's line names the one it got): a larger number was passed
    on to the socket, which listened on it modulo 65536 (99999 served on 34463 while uvicorn's line said 99999), and
    PORT=abc ended in a ValueError's traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535, or 0 for any free one)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number: ports are 1-65535 (0: any free one)")
    return port


def main_for_folder(folder: str) -> int:
    """`python _wsgi.py [--host --port ...]` in a backend folder."""
    parser = argparse.ArgumentParser(description="Serve this ML backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=port_number, default=None,
                        help="TCP port, 1-65535, 0 for any free one (default: PORT, else 9090)")
    parser.add_argument("--basic-auth-user", default=os.getenv("ML_SERVER_BASIC_AUTH_USER"))
    parser.add_argument("--basic-auth-pass", default=os.getenv("ML_SERVER_BASIC_AUTH_PASS"))
    parser.add_argument("--model-dir", default=os.getenv("MODEL_DIR"))
    parser.add_argument("--log-level", default=os.getenv("LOG_LEVEL", "INFO"))
    args = parser.parse_args()
    if args.port is None:  # PORT is read only when --port is not given, and its error names PORT, not --port
        try:
            args.port = port_number(os.getenv("PORT") or "9090")
        except argparse.ArgumentTypeError as exc:
            parser.error(f"PORT={os.getenv('PORT')!r}: {exc}")
    try:
        serve(Path(folder), args.host, args.port, args.basic_auth_user, args.basic_auth_pass,
              Path(args.model_dir) if args.model_dir else None, args.log_level)
    except (ModelDirInUse, ScriptImportFailed) as exc:
        print(f"railyard-ml: {exc}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    cli()
