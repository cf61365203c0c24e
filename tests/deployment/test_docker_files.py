"""docker/: the compose files agree with each other, with the installed Flower CLIs and with the project pins.

No Docker engine runs on the project's machines, so images are not built here:
these checks catch what a typo would break (a flag Flower does not know, a
node with the wrong partition, a version that differs between images).
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.local_federation import REPO, executable

DOCKER = REPO / "docker"
IMAGES = {"superlink": "flower-superlink", "supernode": "flower-supernode", "superexec": "flower-superexec"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DOCKER / name).read_text())


def merged(*names: str) -> dict[str, dict[str, Any]]:
    """Services after compose's override rules for what we use (mappings merge, lists/scalars replace)."""
    services: dict[str, dict[str, Any]] = {}
    for name in names:
        for service, spec in load(name)["services"].items():
            services[service] = {**services.get(service, {}), **spec}
    return services


@cache
def flags_of(program: str) -> set[str]:
    """Long options an installed Flower executable accepts (from its --help)."""
    out = subprocess.run([executable(program), "--help"], capture_output=True, text=True, timeout=120).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]+", out))


def flwr_pin() -> str:
    match = re.search(r'"flwr\[simulation\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins flwr[simulation]==<version>"
    return match.group(1)


def program_of(service: str, spec: dict[str, Any]) -> str:
    if spec.get("entrypoint"):
        return spec["entrypoint"][0]
    image = spec.get("image", "")
    for kind, program in IMAGES.items():
        if image.startswith(f"flwr/{kind}:"):
            return program
    assert image.startswith("fedrouter-superexec:"), f"{service}: unexpected image {image}"
    return "flower-superexec"


@pytest.mark.slow
@pytest.mark.parametrize(
    "files", [("compose.yaml",), ("compose.yaml", "compose.tls.yaml"), ("compose.yaml", "compose.gpu.yaml")]
)
def test_compose_commands_use_flags_flower_knows(files: tuple[str, ...]) -> None:
    for service, spec in merged(*files).items():
        program = program_of(service, spec)
        used = {arg for arg in spec["command"] if arg.startswith("--")}
        unknown = used - flags_of(program)
        assert not unknown, f"{service} ({program}) uses flags it does not accept: {sorted(unknown)}"


def test_images_match_the_flwr_pin() -> None:
    version = flwr_pin()
    for service, spec in merged("compose.yaml").items():
        if spec["image"].startswith("flwr/"):
            assert spec["image"].endswith(f":{version}"), f"{service}: {spec['image']} vs flwr=={version}"
    assert f"ARG FLWR_VERSION={version}" in (DOCKER / "Dockerfile").read_text()


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.tls.yaml")])
def test_one_supernode_and_executor_per_partition(files: tuple[str, ...]) -> None:
    services = merged(*files)
    nodes = {name: spec for name, spec in services.items() if name.startswith("supernode-")}
    assert len(nodes) >= 3
    partitions = []
    for name, spec in nodes.items():
        config = spec["command"][spec["command"].index("--node-config") + 1]
        values = dict(item.split("=") for item in config.split())
        assert name == f"supernode-{values['partition-id']}", f"{name}: {config}"
        assert int(values["num-partitions"]) == len(nodes), f"{name}: {config} but {len(nodes)} SuperNodes"
        assert spec["command"][spec["command"].index("--isolation") + 1] == "process"
        port = spec["command"][spec["command"].index("--port") + 1]
        executor = services[name.replace("supernode", "clientexec")]
        address = executor["command"][executor["command"].index("--runtime-api-address") + 1]
        assert address == f"{name}:{port}", f"{name}'s executor connects to {address}"
        partitions.append(int(values["partition-id"]))
    assert sorted(partitions) == list(range(len(nodes)))
    link = services["superlink"]["command"]
    assert "--disable-runtime-dependency-installation" in link and "process" in link
    link_port = link[link.index("--port") + 1]
    for spec in [*nodes.values(), services["serverexec"]]:
        command = spec["command"]
        target = command[command.index("--superlink" if "--superlink" in command else "--runtime-api-address") + 1]
        assert target == f"superlink:{link_port}"


def test_tls_override_secures_every_link_to_the_superlink() -> None:
    services = merged("compose.yaml", "compose.tls.yaml")
    link = services["superlink"]["command"]
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert {"--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"} <= set(link)
    script = (DOCKER / "generate-credentials.sh").read_text()
    for name, spec in services.items():
        command = spec["command"]
        if name == "superlink" or name.startswith(("clientexec-", "worker-")):
            continue  # a SuperNode's executor and worker talk to it and each other inside the node
        assert "--insecure" not in command and "--root-certificates" in command, name
        mounted = {volume.split(":")[1] for volume in spec["volumes"]}
        for flag in ("--root-certificates", "--auth-supernode-private-key"):
            if flag in command:
                path = command[command.index(flag) + 1]
                assert f"/app/{path}" in mounted, f"{name}: {path} is not mounted"
                assert Path(path).name.split("-")[0] in script, f"{path} is not made by generate-credentials.sh"


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.tls.yaml")])
def test_every_node_has_a_worker_its_executor_reaches_through_their_own_volume(files: tuple[str, ...]) -> None:
    services = merged(*files)
    for name, spec in services.items():
        if not name.startswith("supernode-"):
            continue
        partition = name.split("-")[1]
        config = spec["command"][spec["command"].index("--node-config") + 1]
        values = dict(item.split("=") for item in config.split())
        socket_path = values["worker"].strip("'\"")
        worker, executor = services[f"worker-{partition}"], services[f"clientexec-{partition}"]
        assert worker["command"][worker["command"].index("--socket") + 1] == socket_path
        assert worker["image"] == executor["image"], "the worker runs the code the executor's image carries"
        shared = {v for v in worker["volumes"]} & {v for v in executor["volumes"]}
        assert shared == {f"worker-{partition}:{Path(socket_path).parent}"}, f"{name}: {shared}"
        others = [s for n, s in services.items() if n not in (f"worker-{partition}", f"clientexec-{partition}")]
        assert not any(v in s.get("volumes", []) for s in others for v in shared), "the socket's volume is private"
    assert "mkdir -p /run/fedrouter && chown app:app /run/fedrouter" in (DOCKER / "Dockerfile").read_text()


def test_gpu_override_reserves_a_gpu_for_every_client_executor() -> None:
    services = merged("compose.yaml", "compose.gpu.yaml")
    executors = [name for name in services if name.startswith(("clientexec-", "worker-"))]
    assert executors
    for name in executors:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        assert services[name]["image"] == services["serverexec"]["image"], f"{name} runs the image serverexec builds"
