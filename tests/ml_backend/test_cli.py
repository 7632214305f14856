"""`railyard-ml init` then `railyard-ml start` (and the folder's own `python _wsgi.py`) through the real entry
points, as separate processes."""

from __future__ import annotations

import json
import os
import re
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
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
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
    assert run("init", str(folder), "--script", f"{HERE / 'ls1_style_backend.py'}:MajorityModel").returncode == 0
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
    for args, reason in cases:
        answer = run(*args)
        assert answer.returncode == 2 and reason in answer.stderr, (args, answer.stderr)
    assert not (tmp_path / "x").exists()

    assert run("init", str(tmp_path / "x"), "--script", f"{two}:B").returncode == 0
    again = run("init", str(tmp_path / "x"), "--script", f"{two}:A")
    assert again.returncode == 2 and "exists" in again.stderr
    assert run("init", str(tmp_path / "x"), "--script", f"{two}:A", "--force").returncode == 0
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
    for script, has in ((plain, "(it defines no class)"), (other_base, "(its classes: Base, Model(Base))")):
        answer = run("init", str(tmp_path / "x"), "--script", str(script))
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
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
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
    folder = tmp_path / "b"
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
    config = folder / "railyard-ml.json"
    cases = [  # (railyard-ml.json, the reason said, whether `init --force` is the fix said)
        ('{"script": "ls2_style_backend.py"', f"{config} is not JSON (Expecting", True),
        ('["ls2_style_backend.py"]', f'{config} must name the "script" and its "model_class"', True),
        ('{"script": "ls2_style_backend.py"}', f'{config} must name the "script" and its "model_class"', True),
        ('{"script": "gone.py", "model_class": "X"}', f"{config} names the script 'gone.py', which is not in", False),
        ('{"script": "ls2_style_backend.py", "model_class": "Nope"}',
         f"ls2_style_backend.py has no 'Nope' (the model_class {config} names)", True),
    ]
    for text, reason, remade in cases:
        config.write_text(text)
        for args in (("start", str(folder), "--port", str(free_port())), ("deploy", "railyard", str(folder))):
            answer = run(*args)
            assert answer.returncode == 2 and reason in answer.stderr, (text, args, answer.stderr[-600:])
            assert "Traceback" not in answer.stderr and "\u256d" not in answer.stderr  # no (rich) traceback
            assert (f"railyard-ml init {folder} --script" in answer.stderr) == remade, answer.stderr


def test_deploy_railyard_refuses_with_a_reason(tmp_path):
    folder = tmp_path / "b"
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
    answer = run("deploy", "railyard", str(folder))  # never set up by Label Studio: no labeling config to ship
    assert answer.returncode == 2 and "no labeling config" in answer.stderr and "--label-config" in answer.stderr
    config = tmp_path / "config.xml"
    nobody = f"http://127.0.0.1:{free_port()}"
    sign_in = ("--url", nobody, "--username", "u", "--password", "p", "--client-id", "c", "--client-secret", "s")
    # a config this model cannot use (it reads <Choices> over <Text>): refused before anything is sent, where it
    # deployed and every inference was then refused
    config.write_text('<View><Image name="image" value="$image"/>'
                      '<Choices name="colour" toName="image"><Choice value="Red"/></Choices></View>')
    answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2 and "could not deploy" not in answer.stderr, answer.stderr
    assert "cannot use this labeling config: no <Choices> over <Text>" in answer.stderr, answer.stderr
    config.write_text("<View/>")  # none at all: the same
    answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2 and "no <Choices> over <Text>" in answer.stderr, answer.stderr
    config.write_text(TEXT_CONFIG)  # its own: checked, then sent (here to nobody)
    answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2 and "could not deploy to Railyard" in answer.stderr, answer.stderr
    # a model whose construction needs the config (1.x style: reads parsed_label_config in __init__)
    majority = tmp_path / "majority"
    assert run("init", str(majority), "--script", f"{HERE / 'ls1_style_backend.py'}:MajorityModel").returncode == 0
    config.write_text("<View/>")
    answer = run("deploy", "railyard", str(majority), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2 and "cannot be built with this labeling config (IndexError" in answer.stderr, \
        answer.stderr


def test_a_port_out_of_range_or_a_broken_config_file_is_refused_with_a_reason(tmp_path):
    """journey, session 28: `start --port 99999` (and the folder's `_wsgi.py --port 99999`) listened on 34463
    (the port modulo 65536) while uvicorn's line said 99999, `PORT=abc python _wsgi.py` ended in a ValueError's
    traceback, and `deploy railyard --label-config` of a file that is not XML (or holds a DOCTYPE) ended in an
    InvalidLabelConfig traceback with exit 1. Each now exits 2 at once, naming the problem."""
    folder = tmp_path / "b"
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
    wsgi = [sys.executable, str(folder / "_wsgi.py")]
    for command, extra_env, reason in [
        ([CLI, "start", str(folder), "--port", "99999"], {}, "65535"),
        ([CLI, "start", str(folder), "--port", "-1"], {}, "greater than or equal to 0"),
        ([*wsgi, "--port", "99999"], {}, "99999 is not a port number: ports are 1-65535"),
        (wsgi, {"PORT": "abc"}, "PORT='abc': 'abc' is not a port number"),
        (wsgi, {"PORT": "70000"}, "PORT='70000': 70000 is not a port number"),
    ]:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**user_env(), **extra_env})
        said = " ".join(answer.stderr.replace("│", " ").split())  # typer's box wraps its lines
        assert answer.returncode == 2 and reason in said, (command, answer.stderr)
        assert "Traceback" not in answer.stderr, answer.stderr
    sign_in = ("--url", f"http://127.0.0.1:{free_port()}", "--username", "u", "--password", "p", "--client-id", "c",
               "--client-secret", "s")
    config = tmp_path / "config.xml"
    for text, reason in [("<View", "the labeling config is not valid XML"),
                         ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "the labeling config may not contain a DOCTYPE")]:
        config.write_text(text)
        answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
        assert answer.returncode == 2 and f"{config}: {reason}" in answer.stderr, answer.stderr
        assert "Traceback" not in answer.stderr and "could not deploy" not in answer.stderr, answer.stderr


def test_a_label_config_not_in_utf8_is_refused_naming_the_file(tmp_path):
    """review of ea23c9ba (session 28): `deploy railyard --label-config` of a file in another encoding ended in
    "'utf-8' codec can't decode byte 0xe9 ..." naming no file (and a folder in a traceback). Now exit 2 naming the
    file and UTF-8; a UTF-8 file with a byte order mark (Windows editors) is read as UTF-8."""
    folder = tmp_path / "b"
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
    sign_in = ("--url", f"http://127.0.0.1:{free_port()}", "--username", "u", "--password", "p", "--client-id", "c",
               "--client-secret", "s")
    config = tmp_path / "config.xml"
    config.write_bytes(TEXT_CONFIG.replace("<View>", "<View><!-- caf\u00e9 -->").encode("latin-1"))
    answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2, answer.stderr
    assert f"{config}: the labeling config must be UTF-8 text (byte " in answer.stderr, answer.stderr
    assert "Traceback" not in answer.stderr and "could not deploy" not in answer.stderr, answer.stderr
    answer = run("deploy", "railyard", str(folder), "--label-config", str(tmp_path), *sign_in)
    assert answer.returncode == 2 and f"{tmp_path}: cannot read the labeling config" in answer.stderr, answer.stderr
    assert "Traceback" not in answer.stderr, answer.stderr
    config.write_bytes(b"\xef\xbb\xbf" + TEXT_CONFIG.encode())  # checked, then sent (here to nobody)
    answer = run("deploy", "railyard", str(folder), "--label-config", str(config), *sign_in)
    assert answer.returncode == 2 and "could not deploy to Railyard" in answer.stderr, answer.stderr


def test_port_0_serves_on_a_free_port_its_line_names(tmp_path):
    """review of ddeda4bc (session 28): `--port 0` (any free port: uvicorn's line names the one it got, as it did
    before) was refused with the ports past 65535."""
    folder = tmp_path / "b"
    assert run("init", str(folder), "--script", str(HERE / "ls2_style_backend.py")).returncode == 0
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
