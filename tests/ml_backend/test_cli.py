"""`railyard-ml init` then `railyard-ml start` (and the folder's own `python _wsgi.py`) through the real entry
points, as separate processes. Commands refused before anything is served run one after another in one fresh
interpreter (run_in_one_interpreter), each with its own exit code and stderr, where the test is not about the process
boundary (a traceback reaching the top of a process, a start that serves, one process holding the model directory):
a fresh `railyard-ml` costs ~0.45 s of CPU, most of it typer importing pydantic to coerce the parameters, and this
file started ~55 of them (session 40). The folders a test only needs made are made by `init` in this process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.ml_backend.conftest import TEXT_CONFIG, annotation_event, free_port, versions, wait_until

CLI = str(Path(sys.executable).parent / "railyard-ml")
HERE = Path(__file__).parent


def user_env() -> dict[str, str]:
    """The environment of a user's shell: none of what earlier in-process tests set (app_for sets MODEL_DIR for
    the backends that read it, and a backend started here must keep its state in its own folder)."""
    return {k: v for k, v in os.environ.items() if k != "MODEL_DIR" and not k.startswith("RAILYARD_CLIENT_")}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=user_env())


# `railyard-ml` commands (argv[1], JSON) one after another in this interpreter, as the entry point runs them
# (railyard_ml.cli.main: typer's standalone mode, which ends in SystemExit), each one's stdout and stderr taken apart;
# [[exit code, stdout, stderr], ...] written to argv[2]. An exception reaching this loop is printed as a traceback
# (exit 1), as it would reach the top of a process. What a command changed that the next one would see is put back:
# the modules of a backend folder under argv[3] (a script imported by start or deploy), sys.path (the folder put
# first), the environment (MODEL_DIR set by start) and the root logger's handlers (start's basicConfig). A start that
# got past every refusal (to the model directory's claim, just before uvicorn) raises here: a lost refusal served in
# this interpreter until the test's 300-s timeout. Nothing may reach this interpreter's own stdout or stderr (written
# around the redirection, it would be missing from a command's: "Traceback" not in its stderr proves nothing then).
BATCH = r"""
import contextlib, io, json, logging, os, sys, traceback
from pathlib import Path
import railyard_ml.cli
from railyard_ml.cli import main
def would_serve(model_dir):
    raise RuntimeError(f"the command would serve ({model_dir} claimed): a batch runs only commands refused before")
railyard_ml.cli.claim_model_dir = would_serve
commands, answers, root = json.loads(sys.argv[1]), Path(sys.argv[2]), str(Path(sys.argv[3]).resolve()) + os.sep
path, environ, handlers = list(sys.path), dict(os.environ), list(logging.root.handlers)
done = []
for args in commands:
    sys.argv = ["railyard-ml", *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)  # as the interpreter prints sys.exit("message")
        except BaseException:
            traceback.print_exc()
            code = 1
    done.append([code, out.getvalue(), err.getvalue()])
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    logging.root.handlers[:] = handlers
answers.write_text(json.dumps(done))
"""


def run_in_one_interpreter(root: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """`run`'s answers for commands that serve nothing, run one after another in one fresh interpreter (the
    backend folders they name under `root`)."""
    answers = root / f"answers-{len(list(root.glob('answers-*')))}.json"
    # -P: the working directory is not put first on sys.path, as it is not for the console script
    done = subprocess.run([sys.executable, "-P", "-c", BATCH, json.dumps(commands), str(answers), str(root)],
                          capture_output=True, text=True, timeout=120, env=user_env())
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    said = json.loads(answers.read_text())
    assert len(said) == len(commands), said
    return [subprocess.CompletedProcess([CLI, *args], code, out, err)
            for args, (code, out, err) in zip(commands, said, strict=True)]


def make_folder(folder: Path, script: str) -> None:
    """`railyard-ml init folder --script script`, in this process: for a test that needs the folder, not the
    command (test_init_makes_a_runnable_folder_and_start_serves_it runs the command)."""
    from railyard_ml.cli import init

    init(folder, script)
    assert (folder / "railyard-ml.json").is_file()


def up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def serve_process(command: list[str], log: Path, port: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                               env=user_env())
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: up(url) or process.poll() is not None, timeout=120, every=0.2)
    assert process.poll() is None, log.read_text()
    return process, url


def test_init_makes_a_runnable_folder_and_start_serves_it(tmp_path):
    folder = tmp_path / "keywords"
    made = run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py"))
    assert made.returncode == 0, made.stderr
    assert {p.name for p in folder.iterdir()} >= {"ls2_style_backend.py", "_wsgi.py", "requirements.txt",
                                                    "Dockerfile", "README.md", "railyard-ml.json"}
    assert json.loads((folder / "railyard-ml.json").read_text()) == {"script": "ls2_style_backend.py",
                                                                     "model_class": "KeywordModel"}
    assert (folder / "requirements.txt").read_text().splitlines()[0] == "railyard-ml"
    assert "_wsgi.py" in (folder / "Dockerfile").read_text()

    port = free_port()
    process, url = serve_process([CLI, "start", str(folder), "--port", str(port)], tmp_path / "start.log", port)
    try:
        assert httpx.get(f"{url}/health").json()["model_class"] == "KeywordModel"
        answer = httpx.post(f"{url}/webhook", json=annotation_event(1, "sunny happy", "Positive"))
        assert answer.status_code == 201
        wait_until(lambda: versions(url)["current_version"] == "keywords-v0.1.0")
        body = httpx.post(f"{url}/predict", json={"tasks": [{"id": 9, "data": {"text": "so sunny"}}],
                                                  "project": "1.1", "label_config": TEXT_CONFIG}).json()
        assert body["results"][0]["result"][0]["value"]["choices"] == ["Positive"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status names it
        assert process.wait(30) in (0, -signal.SIGTERM)
    assert (folder / "models" / "railyard-ml.db").exists()  # state lives in the folder by default

    # the folder's own entry (what its Dockerfile runs) serves the same state
    port = free_port()
    process, url = serve_process([sys.executable, str(folder / "_wsgi.py"), "--port", str(port)],
                                 tmp_path / "wsgi.log", port)
    try:
        assert versions(url)["current_version"] == "keywords-v0.1.0"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_a_second_start_on_one_model_directory_is_refused(tmp_path):
    """Two processes on one model directory took each other's running and queued runs for interrupted at their
    start: the second `start` (or the folder's `_wsgi.py`) ends at once with exit 2, naming the first; the first
    serves on."""
    folder = tmp_path / "keywords"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    port = free_port()
    process, url = serve_process([CLI, "start", str(folder), "--port", str(port)], tmp_path / "start.log", port)
    try:
        for command in ([CLI, "start", str(folder), "--port", str(free_port())],
                        [sys.executable, str(folder / "_wsgi.py"), "--port", str(free_port())]):
            second = subprocess.run(command, capture_output=True, text=True, timeout=60, env=user_env())
            assert second.returncode == 2, (command, second.stderr)
            assert f"in use by another railyard-ml process (pid {process.pid})" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        assert up(url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)


def test_start_with_basic_auth(tmp_path):
    folder = tmp_path / "majority"
    make_folder(folder, f"{HERE / 'ls1_style_backend.py'}:MajorityModel")
    port = free_port()
    process = subprocess.Popen([CLI, "start", str(folder), "--port", str(port), "--basic-auth-user", "ls",
                                "--basic-auth-pass", "secret"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _status(url) == 401, timeout=120, every=0.2)
        assert httpx.get(f"{url}/health", auth=("ls", "secret")).status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _status(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_init_and_start_refuse_with_a_reason(tmp_path):
    two = tmp_path / "two.py"
    two.write_text("from railyard_ml import LabelStudioMLBase\n\nclass A(LabelStudioMLBase):\n    pass\n\n"
                   "class B(A):\n    pass\n")
    cases = [
        (("init", str(tmp_path / "x"), "--script", str(tmp_path / "missing.py")), "no Python script"),
        (("init", str(tmp_path / "x"), "--script", str(two)), "2 classes extending LabelStudioMLBase (A, B)"),
        (("init", str(tmp_path / "x"), "--script", f"{two}:C"), "no class C"),
        (("start", str(tmp_path)), "not a backend folder"),
        (("start", str(tmp_path), "--basic-auth-user", "u"), "both --basic-auth-user and --basic-auth-pass"),
    ]
    for (args, reason), answer in zip(cases, run_in_one_interpreter(tmp_path, *(args for args, _ in cases)),
                                  strict=True):
        assert answer.returncode == 2 and reason in answer.stderr, (args, answer.stderr)
    assert not (tmp_path / "x").exists()

    made, again, forced = run_in_one_interpreter(tmp_path, ("init", str(tmp_path / "x"), "--script", f"{two}:B"),
                                                 ("init", str(tmp_path / "x"), "--script", f"{two}:A"),
                                                 ("init", str(tmp_path / "x"), "--script", f"{two}:A", "--force"))
    assert made.returncode == 0, made.stderr
    assert again.returncode == 2 and "exists" in again.stderr
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "x" / "railyard-ml.json").read_text())["model_class"] == "A"


def test_init_of_a_script_with_no_backend_class_says_what_it_looks_for_and_what_to_do(tmp_path):
    """A script with no class extending LabelStudioMLBase: `init` says what it looked for (such a class, with
    predict and fit), what the script has instead (a class with predict on another base shows why it was not
    taken) and what to do. It said "has 0 classes extending LabelStudioMLBase (none): name one as x.py:ClassName",
    and naming one only led to "no class X"."""
    plain = tmp_path / "plain.py"
    plain.write_text("import json\n\ndef predict(tasks):\n    return []\n")
    other_base = tmp_path / "other_base.py"
    other_base.write_text("class Base:\n    pass\n\nclass Model(Base):\n    def predict(self, tasks):\n"
                          "        return []\n")
    scripts = ((plain, "(it defines no class)"), (other_base, "(its classes: Base, Model(Base))"))
    answers = run_in_one_interpreter(tmp_path, *(("init", str(tmp_path / "x"), "--script", str(script))
                                                 for script, _ in scripts))
    for (script, has), answer in zip(scripts, answers, strict=True):
        assert answer.returncode == 2, answer.stderr
        said = " ".join(answer.stderr.split())
        assert f"{script} has no class extending LabelStudioMLBase {has}" in said, said
        assert "from railyard_ml import LabelStudioMLBase" in said and "defines predict(self, tasks" in said, said
        assert "class MyModel(LabelStudioMLBase):" in said and "0 classes" not in said, said
        assert "fit(self, event, data" in said and "fit(self, annotations, workdir=None" in said, said  # both styles
    assert not (tmp_path / "x").exists()


def test_a_script_that_does_not_import_is_a_users_error_naming_its_line(tmp_path):
    """A backend script that is not valid Python or raises when imported (no GPU, a model file missing, a module of
    its folder failing): `start`, `deploy railyard` and the folder's `_wsgi.py` ended in a (rich) traceback with exit
    1; now exit 2 and one `railyard-ml:` line naming the file, the line and what it raised, as other user errors."""
    folder = tmp_path / "b"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    script = folder / "ls2_style_backend.py"
    original = script.read_text()
    end = original.count("\n") + 1  # the line appended
    (folder / "helper.py").write_text("LIMIT = 1\nRATIO = LIMIT / 0\n")
    start, deploy = [CLI, "start", str(folder), "--port", str(free_port())], [CLI, "deploy", "railyard", str(folder)]
    wsgi = [sys.executable, str(folder / "_wsgi.py"), "--port", str(free_port())]
    cases = [  # each command meets one script at least (a start costs ~1 s of CPU)
        ("raise RuntimeError('no GPU\\nhere')\n", [start, wsgi],
         f"railyard-ml: ls2_style_backend.py raised RuntimeError when imported: no GPU here (ls2_style_backend.py, "
         f"line {end})"),
        ("def broken(:\n    pass\n", [deploy, wsgi],
         "railyard-ml: ls2_style_backend.py is not valid Python: "),
        ("import helper\n", [start],
         "railyard-ml: ls2_style_backend.py raised ZeroDivisionError when imported: division by zero (helper.py, "
         "line 2)"),
    ]
    for tail, commands, said in cases:
        script.write_text(original + tail)
        for command in commands:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=60, env=user_env())
            assert answer.returncode == 2 and answer.stderr.startswith(said), (command, answer.stderr[-800:])
            assert answer.stderr.count("\n") == 1 and "Traceback" not in answer.stderr, answer.stderr[-800:]
            if "valid Python" in said:
                assert answer.stderr.rstrip().endswith(f"(ls2_style_backend.py, line {end})"), answer.stderr


def test_a_hand_edited_folder_config_is_named_with_how_to_remake_it(tmp_path):
    """railyard-ml.json broken by hand: start and deploy name the file and the fix (a JSONDecodeError or KeyError
    traceback before, or "module 'ls2_style_backend' has no attribute 'Nope'")."""
    made = tmp_path / "b"
    make_folder(made, str(HERE / "ls2_style_backend.py"))
    cases = [  # (railyard-ml.json, the reason said, whether `init --force` is the fix said)
        ('{"script": "ls2_style_backend.py"', "{config} is not JSON (Expecting", True),
        ('["ls2_style_backend.py"]', '{config} must name the "script" and its "model_class"', True),
        ('{"script": "ls2_style_backend.py"}', '{config} must name the "script" and its "model_class"', True),
        ('{"script": "gone.py", "model_class": "X"}', "{config} names the script 'gone.py', which is not in", False),
        ('{"script": "ls2_style_backend.py", "model_class": "Nope"}',
         "ls2_style_backend.py has no 'Nope' (the model_class {config} names)", True),
    ]
    commands, said = [], []  # each case in a copy of the folder, its commands run one after another
    for number, (text, reason, remade) in enumerate(cases):
        folder = shutil.copytree(made, tmp_path / f"b{number}")
        config = folder / "railyard-ml.json"
        config.write_text(text)
        for args in (("start", str(folder), "--port", str(free_port())), ("deploy", "railyard", str(folder))):
            commands.append(args)
            said.append((text, folder, reason.format(config=config), remade))
    for args, (text, folder, reason, remade), answer in zip(commands, said,
                                                           run_in_one_interpreter(tmp_path, *commands), strict=True):
        assert answer.returncode == 2 and reason in answer.stderr, (text, args, answer.stderr[-600:])
        assert "Traceback" not in answer.stderr and "\u256d" not in answer.stderr  # no (rich) traceback
        assert (f"railyard-ml init {folder} --script" in answer.stderr) == remade, answer.stderr


def test_deploy_railyard_refuses_with_a_reason(tmp_path):
    folder = tmp_path / "b"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    nobody = f"http://127.0.0.1:{free_port()}"
    sign_in = ("--url", nobody, "--username", "u", "--password", "p", "--client-id", "c", "--client-secret", "s")
    # a config this model cannot use (it reads <Choices> over <Text>): refused before anything is sent, where it
    # deployed and every inference was then refused
    image, empty, text = tmp_path / "image.xml", tmp_path / "empty.xml", tmp_path / "text.xml"
    image.write_text('<View><Image name="image" value="$image"/>'
                     '<Choices name="colour" toName="image"><Choice value="Red"/></Choices></View>')
    empty.write_text("<View/>")  # none at all: the same
    text.write_text(TEXT_CONFIG)  # its own: checked, then sent (here to nobody)
    # a model whose construction needs the config (1.x style: reads parsed_label_config in __init__)
    majority = tmp_path / "majority"
    make_folder(majority, f"{HERE / 'ls1_style_backend.py'}:MajorityModel")
    unset, cannot_use, no_choices, sent, unbuilt = run_in_one_interpreter(
        tmp_path,
        ("deploy", "railyard", str(folder)),  # never set up by Label Studio: no labeling config to ship
        ("deploy", "railyard", str(folder), "--label-config", str(image), *sign_in),
        ("deploy", "railyard", str(folder), "--label-config", str(empty), *sign_in),
        ("deploy", "railyard", str(folder), "--label-config", str(text), *sign_in),
        ("deploy", "railyard", str(majority), "--label-config", str(empty), *sign_in))
    assert unset.returncode == 2 and "no labeling config" in unset.stderr and "--label-config" in unset.stderr
    assert cannot_use.returncode == 2 and "could not deploy" not in cannot_use.stderr, cannot_use.stderr
    assert "cannot use this labeling config: no <Choices> over <Text>" in cannot_use.stderr, cannot_use.stderr
    assert no_choices.returncode == 2 and "no <Choices> over <Text>" in no_choices.stderr, no_choices.stderr
    assert sent.returncode == 2 and "could not deploy to Railyard" in sent.stderr, sent.stderr
    assert unbuilt.returncode == 2 and "cannot be built with this labeling config (IndexError" in unbuilt.stderr, \
        unbuilt.stderr


def test_a_port_out_of_range_or_a_broken_config_file_is_refused_with_a_reason(tmp_path):
    """journey, session 28: `start --port 99999` (and the folder's `_wsgi.py --port 99999`) listened on 34463
    (the port modulo 65536) while uvicorn's line said 99999, `PORT=abc python _wsgi.py` ended in a ValueError's
    traceback, and `deploy railyard --label-config` of a file that is not XML (or holds a DOCTYPE) ended in an
    InvalidLabelConfig traceback with exit 1. Each now exits 2 at once, naming the problem."""
    folder = tmp_path / "b"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    wsgi = [sys.executable, str(folder / "_wsgi.py")]
    for command, extra_env, reason in [
        ([*wsgi, "--port", "99999"], {}, "99999 is not a port number: ports are 1-65535"),
        (wsgi, {"PORT": "abc"}, "PORT='abc': 'abc' is not a port number"),
        (wsgi, {"PORT": "70000"}, "PORT='70000': 70000 is not a port number"),
    ]:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**user_env(), **extra_env})
        assert answer.returncode == 2 and reason in answer.stderr, (command, answer.stderr)
        assert "Traceback" not in answer.stderr, answer.stderr
    sign_in = ("--url", f"http://127.0.0.1:{free_port()}", "--username", "u", "--password", "p", "--client-id", "c",
               "--client-secret", "s")
    (tmp_path / "not-xml.xml").write_text("<View")
    (tmp_path / "doctype.xml").write_text('<!DOCTYPE x [<!ENTITY a "b">]><View/>')
    cases = [
        (("start", str(folder), "--port", "99999"), "65535"),
        (("start", str(folder), "--port", "-1"), "greater than or equal to 0"),
        (("deploy", "railyard", str(folder), "--label-config", str(tmp_path / "not-xml.xml"), *sign_in),
         f"{tmp_path / 'not-xml.xml'}: the labeling config is not valid XML"),
        (("deploy", "railyard", str(folder), "--label-config", str(tmp_path / "doctype.xml"), *sign_in),
         f"{tmp_path / 'doctype.xml'}: the labeling config may not contain a DOCTYPE"),
    ]
    for (args, reason), answer in zip(cases, run_in_one_interpreter(tmp_path, *(args for args, _ in cases)),
                                  strict=True):
        said = " ".join(answer.stderr.replace("│", " ").split())  # typer's box wraps its lines
        assert answer.returncode == 2 and reason in said, (args, answer.stderr)
        assert "Traceback" not in answer.stderr and "could not deploy" not in answer.stderr, answer.stderr


def test_a_label_config_not_in_utf8_is_refused_naming_the_file(tmp_path):
    """review of ea23c9ba (session 28): `deploy railyard --label-config` of a file in another encoding ended in
    "'utf-8' codec can't decode byte 0xe9 ..." naming no file (and a folder in a traceback). Now exit 2 naming the
    file and UTF-8; a UTF-8 file with a byte order mark (Windows editors) is read as UTF-8."""
    folder = tmp_path / "b"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    sign_in = ("--url", f"http://127.0.0.1:{free_port()}", "--username", "u", "--password", "p", "--client-id", "c",
               "--client-secret", "s")
    config, bom = tmp_path / "config.xml", tmp_path / "bom.xml"
    config.write_bytes(TEXT_CONFIG.replace("<View>", "<View><!-- caf\u00e9 -->").encode("latin-1"))
    bom.write_bytes(b"\xef\xbb\xbf" + TEXT_CONFIG.encode())  # checked, then sent (here to nobody)
    latin1, folder_given, sent = run_in_one_interpreter(
        tmp_path, *(("deploy", "railyard", str(folder), "--label-config", str(path), *sign_in)
                    for path in (config, tmp_path, bom)))
    assert latin1.returncode == 2, latin1.stderr
    assert f"{config}: the labeling config must be UTF-8 text (byte " in latin1.stderr, latin1.stderr
    assert "Traceback" not in latin1.stderr and "could not deploy" not in latin1.stderr, latin1.stderr
    assert folder_given.returncode == 2, folder_given.stderr
    assert f"{tmp_path}: cannot read the labeling config" in folder_given.stderr, folder_given.stderr
    assert "Traceback" not in folder_given.stderr, folder_given.stderr
    assert sent.returncode == 2 and "could not deploy to Railyard" in sent.stderr, sent.stderr


def test_port_0_serves_on_a_free_port_its_line_names(tmp_path):
    """review of ddeda4bc (session 28): `--port 0` (any free port: uvicorn's line names the one it got, as it did
    before) was refused with the ports past 65535."""
    folder = tmp_path / "b"
    make_folder(folder, str(HERE / "ls2_style_backend.py"))
    for command in ([CLI, "start", str(folder), "--port", "0"], [sys.executable, str(folder / "_wsgi.py")]):
        log = tmp_path / "serve.log"
        process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**user_env(), "PORT": "0"})
        try:
            port = _port_it_names(process, log)
            assert port != 0 and up(f"http://127.0.0.1:{port}"), log.read_text()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def _port_it_names(process: subprocess.Popen, log: Path) -> int:
    said = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
    wait_until(lambda: said.search(log.read_text()) or process.poll() is not None, timeout=120, every=0.2)
    assert process.poll() is None, log.read_text()
    return int(said.search(log.read_text()).group(1))
