"""The package imports its public names when first asked for (PEP 562): `railyard-ml init` and `--help` start
without the web app (starlette, uvicorn, the model and the app: the start was ~0.45 s of CPU, ~0.2 s now), and
`from railyard_ml import X` still gives every name the package exports. Each check runs in a fresh interpreter,
since this test process has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
WEB_STACK = ("starlette", "uvicorn", "anyio", "railyard_ml.api", "railyard_ml.model", "railyard_ml.backend",
             "railyard_ml.response")
# typer (0.29) coerces every command's parameters with pydantic TypeAdapters: a command's run imports pydantic
# whatever this package does, but the package alone and `--help` need none of it
NO_COMMAND_RUN = (*WEB_STACK, "pydantic")

# the CLI's entry point (as .venv/bin/railyard-ml runs it), reporting at exit which modules the process imported
CLI_REPORTING_MODULES = """
import atexit, json, sys
report = sys.argv.pop(1)
atexit.register(lambda: open(report, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "railyard-ml"
from railyard_ml.cli import main
sys.exit(main())
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def modules_of_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    report = tmp_path / "modules.json"
    answer = python(CLI_REPORTING_MODULES, str(report), *args)
    return answer, set(json.loads(report.read_text()))


def found(modules: set[str], unwanted: tuple[str, ...] = WEB_STACK) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in unwanted or m in unwanted)


def test_every_exported_name_imports_as_the_object_its_module_defines():
    answer = python("""
import importlib, json, railyard_ml
names = list(railyard_ml.__all__)
found = {}
for name in names:
    value = getattr(railyard_ml, name)
    home = importlib.import_module(railyard_ml._EXPORTS[name])
    found[name] = value is getattr(home, name)
namespace = {}
exec("from railyard_ml import *", namespace)
print(json.dumps({"names": names, "same": found, "star": sorted(set(namespace) & set(names)),
                  "dir": sorted(set(dir(railyard_ml)) & set(names))}))
""")
    assert answer.returncode == 0, answer.stderr
    seen = json.loads(answer.stdout)
    assert set(seen["names"]) == {"LabelInterface", "LabelStudioMLBase", "ModelResponse", "PredictionValue",
                                  "init_app", "parse_config"}
    assert seen["same"] == {name: True for name in seen["names"]}
    assert seen["star"] == sorted(seen["names"]) and seen["dir"] == sorted(seen["names"])


@pytest.mark.parametrize("name", ["LabelInterface", "LabelStudioMLBase", "ModelResponse", "PredictionValue",
                                  "init_app", "parse_config"])
def test_from_railyard_ml_import_each_name_in_a_fresh_process(name):
    answer = python(f"from railyard_ml import {name}; print({name}.__module__)")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip().startswith("railyard_ml.")


def test_an_unknown_name_is_an_attribute_error_naming_it():
    answer = python("""
import railyard_ml
try:
    railyard_ml.LabelStudioMLBass
except AttributeError as exc:
    print(exc)
""")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "module 'railyard_ml' has no attribute 'LabelStudioMLBass'"


def test_the_package_s_submodules_are_still_its_attributes():
    """`import railyard_ml` then `railyard_ml.model.LabelStudioMLBase`: the eager imports made the submodules they
    loaded attributes of the package; each is imported when first asked for."""
    answer = python("""
import railyard_ml, sys
assert "railyard_ml.model" not in sys.modules
print(railyard_ml.model.LabelStudioMLBase.__name__, railyard_ml.api.init_app.__name__,
      railyard_ml.utils.get_single_tag_keys.__name__, railyard_ml.model is sys.modules["railyard_ml.model"])
""")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["LabelStudioMLBase", "init_app", "get_single_tag_keys", "True"]


def test_importing_the_package_or_its_label_config_loads_no_web_stack():
    """Railyard's services import railyard_ml.label_config (monitoring parses labeling configs with it)."""
    answer = python("import sys, json, railyard_ml, railyard_ml.label_config; print(json.dumps(sorted(sys.modules)))")
    assert answer.returncode == 0, answer.stderr
    assert found(set(json.loads(answer.stdout)), NO_COMMAND_RUN) == []


def test_help_starts_without_the_web_stack(tmp_path):
    answer, modules = modules_of_cli(tmp_path, "--help")
    assert answer.returncode == 0, answer.stderr
    assert "init" in answer.stdout and "start" in answer.stdout
    assert "railyard_ml.cli" in modules
    assert found(modules, NO_COMMAND_RUN) == []


def test_init_starts_without_the_web_stack_and_still_finds_the_model_class(tmp_path):
    folder = tmp_path / "keywords"
    answer, modules = modules_of_cli(tmp_path, "init", str(folder), "--script", str(HERE / "ls2_style_backend.py"))
    assert answer.returncode == 0, answer.stderr
    assert json.loads((folder / "railyard-ml.json").read_text())["model_class"] == "KeywordModel"
    assert found(modules) == []


def test_the_base_class_init_looks_for_is_the_models():
    from railyard_ml.cli import MODEL_BASE
    from railyard_ml.model import LabelStudioMLBase

    assert MODEL_BASE == LabelStudioMLBase.__name__


def test_start_of_a_folder_that_is_not_one_fails_before_importing_the_web_app(tmp_path):
    answer, modules = modules_of_cli(tmp_path, "start", str(tmp_path / "nothing"))
    assert answer.returncode == 2
    assert "is not a backend folder" in answer.stderr
    assert "starlette" not in {m.split(".")[0] for m in modules} and "railyard_ml.api" not in modules


def test_a_backend_folder_s_own_modules_do_not_shadow_the_web_app_s(tmp_path):
    """load_model_class puts the folder first on sys.path to import its script; the web app is imported before that
    (as when the package imported it eagerly), so a module of the folder named like one the app imports (html.py
    here; starlette imports the standard library's html) is not taken for it. With the app imported after the
    script, `railyard-ml start` and `python _wsgi.py` of such a folder ended in the folder's html.py."""
    folder = tmp_path / "shadowing"
    folder.mkdir()
    (folder / "railyard-ml.json").write_text(json.dumps({"script": "backend.py", "model_class": "Model"}))
    (folder / "backend.py").write_text("from railyard_ml import LabelStudioMLBase\n\n\n"
                                       "class Model(LabelStudioMLBase):\n    pass\n")
    (folder / "html.py").write_text("raise RuntimeError('the html.py of the folder was imported')\n")
    answer = python("""
import sys
from railyard_ml.cli import app_for
assert "html" not in sys.modules, "imported before app_for: this test no longer tells"
app = app_for(sys.argv[1])
print(type(app).__name__, sys.modules["html"].__file__ != sys.argv[1] + "/html.py")
""", str(folder))
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["Starlette", "True"]
