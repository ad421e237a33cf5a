"""Dockerfile, .dockerignore and docker-compose.yml agree with the app and with each other.

No Docker engine is needed: the files are parsed here, and a compose client (if present) validates the
compose file offline with `config -q`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from core.settings import Settings
from records.database import normalize_database_url
from tests.conftest import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
SERVICE = "training-service"
# The data directory inside the image (Dockerfile ENV DATA_DIR, compose volume target).
IMAGE_DATA_DIR = "/app/data"
# ${NAME}, ${NAME:-default} and ${NAME-default}, as compose interpolates them.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """What compose substitutes when none of the variables is set: each default ($$ is a literal $)."""
    return INTERPOLATION.sub(lambda match: match.group("default") or "", value).replace("$$", "$")


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def environment(name: str) -> dict[str, str]:
    """A service's environment as a mapping, defaults interpolated (both compose syntaxes accepted)."""
    raw = service(name).get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value)) for key, value in raw.items()}


def command_args(name: str) -> list[str]:
    raw = service(name)["command"]
    args = shlex.split(raw) if isinstance(raw, str) else [str(arg) for arg in raw]
    return [interpolate(arg) for arg in args]


def option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def published_ports(name: str) -> dict[int, int]:
    """container port -> host port, from the short "HOST:CONTAINER" syntax."""
    ports = {}
    for entry in service(name).get("ports", []):
        host, container = str(entry).rsplit(":", 1)
        ports[int(container)] = int(host.rsplit(":", 1)[-1])
    return ports


def settings_env_names() -> set[str]:
    prefix = str(Settings.model_config.get("env_prefix") or "")
    return {f"{prefix}{field}".upper() for field in Settings.model_fields}


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instructions(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def index_of(predicate: Any) -> int:
    for index, instruction in enumerate(dockerfile_instructions()):
        if predicate(*instruction):
            return index
    raise AssertionError("no such Dockerfile instruction")


def dockerfile_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in instructions("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(relative_path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern excludes a path or any directory above it; '!' re-includes."""
    parts = relative_path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatch(prefix, glob) for prefix in prefixes) or (
            glob.startswith("**/") and any(fnmatch.fnmatch(part, glob[3:]) for part in parts)
        ):
            ignored = not negate
    return ignored


# --- docker-compose.yml --------------------------------------------------------------------------------


def default_services() -> set[str]:
    """What `docker compose up` starts: services outside any profile."""
    return {name for name, spec in compose()["services"].items() if not spec.get("profiles")}


def test_compose_has_the_three_services_and_the_service_waits_for_healthy_dependencies() -> None:
    assert default_services() == {"postgres", "mlflow", SERVICE}
    assert service(SERVICE)["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "mlflow": {"condition": "service_healthy"},
    }
    assert service("mlflow")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert service("postgres")["image"] == "postgres:15"


def test_every_dependency_waited_on_has_a_health_check_that_probes_it() -> None:
    postgres_check = " ".join(service("postgres")["healthcheck"]["test"])
    assert "pg_isready" in postgres_check

    mlflow_check = " ".join(service("mlflow")["healthcheck"]["test"])
    port = option(command_args("mlflow"), "--port")
    assert f"127.0.0.1:{port}/health" in mlflow_check

    service_check = " ".join(service(SERVICE).get("healthcheck", {}).get("test", [])) or " ".join(
        instructions("HEALTHCHECK")
    )
    assert "/health" in service_check


def test_the_service_gets_only_settings_it_knows_and_publishes_its_port() -> None:
    env = environment(SERVICE)

    unknown = set(env) - settings_env_names()
    assert not unknown, f"not Settings fields, so silently ignored: {unknown}"
    assert {"DATABASE_URL", "MLFLOW_TRACKING_URI", "HOST", "PORT"} <= set(env)
    settings = Settings.model_validate({name.lower(): value for name, value in env.items()})
    assert settings.host == "0.0.0.0"
    assert published_ports(SERVICE) == {settings.port: settings.port}
    assert settings.port == Settings.model_fields["port"].default
    assert published_ports("mlflow") == {5000: 5000}


@pytest.mark.parametrize("name", [SERVICE, "training-service-ray"])
def test_the_service_answers_the_host_names_it_is_reached_by(name: str) -> None:
    # ALLOWED_HOSTS (against DNS rebinding): the browser on the host through the published port, the
    # image's health check on 127.0.0.1, and other containers by service name.
    env = environment(name)
    settings = Settings.model_validate({key.lower(): value for key, value in env.items()})

    assert {"localhost", "127.0.0.1", name} <= set(settings.allowed_hosts)


def test_the_service_database_url_points_at_the_postgres_service_with_its_credentials() -> None:
    url = make_url(normalize_database_url(environment(SERVICE)["DATABASE_URL"]))
    postgres_env = environment("postgres")

    assert url.drivername == "postgresql+psycopg2"
    assert url.host == "postgres" and (url.port or 5432) == 5432
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.database == postgres_env["POSTGRES_DB"]


def test_mlflow_has_its_own_database_created_at_first_start() -> None:
    store = make_url(option(command_args("mlflow"), "--backend-store-uri"))
    service_database = make_url(normalize_database_url(environment(SERVICE)["DATABASE_URL"])).database

    # Both keep their Alembic history in `alembic_version`: one database each, or they collide.
    assert store.database != service_database
    # The image has psycopg2 only; a bare postgresql:// would ask SQLAlchemy 2.1 for psycopg 3.
    assert store.drivername == "postgresql+psycopg2"
    assert store.host == "postgres"
    init_mounts = [str(v) for v in service("postgres")["volumes"] if "docker-entrypoint-initdb.d" in str(v)]
    assert init_mounts, "no init scripts mounted: MLflow's database would not exist"
    init_dir = PROJECT_ROOT / init_mounts[0].split(":")[0]
    scripts = " ".join(path.read_text() for path in sorted(init_dir.glob("*.sql")))
    assert re.search(rf"CREATE DATABASE\s+\"?{store.database}\"?", scripts, re.IGNORECASE), scripts


def test_mlflow_accepts_the_host_names_it_is_called_by() -> None:
    args = command_args("mlflow")
    allowed = set(option(args, "--allowed-hosts").split(","))
    tracking = urlparse(environment(SERVICE)["MLFLOW_TRACKING_URI"])

    assert tracking.hostname == "mlflow"
    assert tracking.port == int(option(args, "--port"))
    # MLflow 3 answers 403 "Invalid Host header" to any host not listed.
    assert {tracking.netloc, tracking.hostname, "localhost:5000", "127.0.0.1:5000"} <= allowed
    assert option(args, "--host") == "0.0.0.0"
    assert "--serve-artifacts" in args
    artifacts = option(args, "--artifacts-destination")
    assert any(str(volume).endswith(f":{artifacts}") for volume in service("mlflow")["volumes"])


def test_the_mlflow_image_is_the_official_one_with_the_postgres_driver_built_in() -> None:
    build = service("mlflow")["build"]
    dockerfile = PROJECT_ROOT / build["context"] / build["dockerfile"]
    text = dockerfile.read_text()

    assert "ghcr.io/mlflow/mlflow:v3.17.2" in text
    assert re.search(r"^RUN .*pip install .*psycopg2-binary", text, re.MULTILINE), text


RAY_SERVICES = {"ray-head", "ray-worker", "training-service-ray"}


def test_the_ray_profile_has_a_head_a_worker_and_a_service_that_joins_them() -> None:
    profiled = {name for name, spec in compose()["services"].items() if "ray" in spec.get("profiles", [])}
    assert profiled == RAY_SERVICES
    head_args = command_args("ray-head")
    head_port = int(next(arg.split("=", 1)[1] for arg in head_args if arg.startswith("--port=")))
    address = f"ray-head:{head_port}"

    # The head schedules only, exposes no dashboard (its Jobs API runs code) and publishes no port.
    assert {"--head", "--num-cpus=0", "--include-dashboard=false", "--block"} <= set(head_args)
    assert not published_ports("ray-head") and not published_ports("ray-worker")
    assert service("ray-head")["build"]["args"]["WITH_RAY"] == "true"
    assert f"--address={address}" in command_args("ray-worker")
    assert service("ray-worker")["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert "ray health-check" in " ".join(service("ray-head")["healthcheck"]["test"])

    env = environment("training-service-ray")
    assert set(env) <= settings_env_names(), set(env) - settings_env_names()
    assert env["EXECUTOR"] == "ray" and env["RAY_ADDRESS"] == address
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow:")  # artifacts reachable from every node
    assert make_url(normalize_database_url(env["DATABASE_URL"])).host == "postgres"
    # It joins the cluster as a node without CPUs (a driver needs a local node), then serves.
    start = " ".join(command_args("training-service-ray"))
    assert f"ray start --address={address} --num-cpus=0" in start and start.endswith("exec python main.py")
    # Every node of the profile runs the one image with Ray, so code and libraries match.
    assert {service(name)["image"] for name in RAY_SERVICES} == {service("ray-head")["image"]}
    # The worker's scratch space is not the service's: nothing may depend on a shared disk.
    assert environment("ray-worker")["DATA_DIR"] != IMAGE_DATA_DIR


def test_the_image_installs_ray_only_when_asked() -> None:
    args = dict(arg.split("=", 1) for arg in instructions("ARG") if "=" in arg)
    install = next(args_ for args_ in instructions("RUN") if "requirements-ray.txt" in args_)

    assert args["WITH_RAY"] == "false"
    assert (
        'if [ "$WITH_RAY" = "true" ]; then pip install -r requirements-ray.txt -c constraints.txt' in install
    )


def test_data_lives_in_named_volumes() -> None:
    declared = set(compose().get("volumes") or {})
    mounts = {
        name: [str(volume) for volume in service(name).get("volumes", [])] for name in compose()["services"]
    }
    assert f"training-data:{IMAGE_DATA_DIR}" in mounts[SERVICE]
    assert "postgres-data:/var/lib/postgresql/data" in mounts["postgres"]
    named = {volume.split(":")[0] for volumes in mounts.values() for volume in volumes}
    named = {name for name in named if not name.startswith((".", "/"))}
    assert named == declared


def test_the_service_has_time_to_save_its_runs_on_stop() -> None:
    from main import SHUTDOWN_GRACE_S

    grace = str(service(SERVICE)["stop_grace_period"])
    assert grace.endswith("s")
    assert float(grace[:-1]) > SHUTDOWN_GRACE_S


def compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1, Debian's package): both parse offline."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profile", [[], ["--profile", "ray"]], ids=["default", "ray-profile"])
def test_a_compose_client_accepts_the_file(profile: list[str]) -> None:
    client = compose_client()
    if client is None:
        reason = "no compose client (`docker compose` plugin or Debian's `docker-compose`) to validate with"
        if os.environ.get("CI"):
            pytest.fail(f"CI must validate docker-compose.yml: {reason}", pytrace=False)
        pytest.skip(reason)
    # A clean environment: a developer's POSTGRES_PASSWORD etc. must not decide the result.
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_the_image_is_python_311_slim_and_runs_as_a_non_root_user() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    last_user = index_of(lambda name, _args: name == "USER")
    assert all(name != "RUN" for name, _args in dockerfile_instructions()[last_user:]), "RUN as the app user"


def test_dependencies_install_before_the_code_is_copied() -> None:
    steps = dockerfile_instructions()
    copy_pins = index_of(lambda name, args: name == "COPY" and "requirements.txt" in args)
    install = index_of(lambda name, args: name == "RUN" and "pip install -r requirements.txt" in args)
    copy_code = index_of(lambda name, args: name == "COPY" and args.split()[-2:] == [".", "."])

    assert "constraints.txt" in steps[copy_pins][1]
    assert copy_pins < install < copy_code
    assert "-c constraints.txt" in steps[install][1]


def test_torch_comes_from_the_cpu_index_by_default_and_the_index_is_a_build_arg() -> None:
    args = dict(arg.split("=", 1) for arg in instructions("ARG") if "=" in arg)
    install = next(args_ for args_ in instructions("RUN") if "torch==" in args_)

    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert '--index-url "$TORCH_INDEX_URL"' in install
    # The exact version requirements.txt pins, read from it: no second copy that could drift.
    assert "s/^torch==" in install and "requirements.txt" in install
    assert '"torch==$TORCH_VERSION"' in install
    compose_arg = service(SERVICE)["build"]["args"]["TORCH_INDEX_URL"]
    assert interpolate(compose_arg) == args["TORCH_INDEX_URL"]


def test_the_exposed_port_health_check_and_command_match_the_app(client: TestClient) -> None:
    env = dockerfile_env()
    default_port = Settings.model_fields["port"].default

    assert instructions("EXPOSE") == [str(default_port)]
    assert env["PORT"] == str(default_port)
    assert env["DATA_DIR"] == IMAGE_DATA_DIR
    app_env = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert app_env <= settings_env_names(), app_env - settings_env_names()
    assert json.loads(instructions("CMD")[0]) == ["python", "main.py"]

    healthcheck = instructions("HEALTHCHECK")
    assert len(healthcheck) == 1
    probe = json.loads(healthcheck[0].split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    path = re.search(r"127\.0\.0\.1:%s(/[\w/]*)", probe[2])
    assert path is not None, probe
    # urlopen raises on anything but 2xx: the probed path must answer 200 on the real app.
    assert client.get(path.group(1)).status_code == 200
    assert "os.environ.get('PORT', '8001')" in probe[2]


def test_the_build_context_leaves_out_secrets_and_local_state_but_keeps_the_app() -> None:
    patterns = dockerignore_patterns()
    for unwanted in (".env", ".venv/bin/python", "data/service.db", ".git/config", "tests/conftest.py"):
        assert is_ignored(unwanted, patterns), unwanted

    needed = ["requirements.txt", "constraints.txt", "alembic.ini", "main.py", "api/health.py"]
    needed += [str(path.relative_to(PROJECT_ROOT)) for path in (PROJECT_ROOT / "migrations").rglob("*.py")]
    needed += [path.name for path in PROJECT_ROOT.glob("*.py")]
    for package in ("api", "core", "records", "agents", "mazes", "training"):
        needed += [str(path.relative_to(PROJECT_ROOT)) for path in (PROJECT_ROOT / package).rglob("*.py")]
    kept_out = [path for path in needed if is_ignored(path, patterns)]
    assert not kept_out, kept_out
