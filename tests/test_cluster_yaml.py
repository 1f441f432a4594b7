"""cluster.yaml is valid for `ray up` and stays safe by default.

Validation runs exactly what `ray up` runs before it touches a cloud (prepare_config + validate_config),
offline: boto3 is made to fail if anything tries to reach AWS. The security checks read the *prepared*
config, the one `ray up` would execute, so deleting an override (and falling back to the launcher's
defaults, which bind the dashboard to 0.0.0.0) fails here too.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard + Jobs API, Ray Client
AUTH_ENV = "RAY_AUTH_MODE=token"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _prepare(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Prepare and validate like `ray up`, failing loudly on any attempt to create an AWS client."""

    def no_aws(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("cluster.yaml validation must not call AWS")

    monkeypatch.setattr(boto3, "client", no_aws)
    monkeypatch.setattr(boto3, "resource", no_aws)
    monkeypatch.setattr(boto3, "Session", no_aws)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return _prepare(_raw(), monkeypatch)


def _ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, f"expected one `ray start` command, got {starts}"
    return starts[0]


def _exported_token_path(start: str) -> str:
    match = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", start)
    assert match, f"RAY_AUTH_TOKEN_PATH is not set in: {start}"
    return match.group(1)


def _is_public(cidr: str) -> bool:
    """True for a range that admits any internet address (0.0.0.0/0, ::/0, or any non-private range)."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False  # a placeholder: AWS rejects it, so `ray up` stops before opening anything
    return network.prefixlen == 0 or not network.is_private


def _opens(rule: dict[str, Any], port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True  # all protocols, all ports
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1))


def _public_ranges(rule: dict[str, Any]) -> list[str]:
    ranges = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
    return [cidr for cidr in ranges if _is_public(cidr)]


def test_validates_like_ray_up(config: dict[str, Any]) -> None:
    assert config["provider"]["type"] == "aws"
    assert config["cluster_name"]


def test_dashboard_binds_to_localhost_only(config: dict[str, Any]) -> None:
    start = _ray_start(config["head_start_ray_commands"])
    assert re.findall(r"--dashboard-host[= ](\S+)", start) == ["127.0.0.1"]
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "0.0.0.0" not in command


def test_token_auth_on_every_node(config: dict[str, Any]) -> None:
    head = _ray_start(config["head_start_ray_commands"])
    worker = _ray_start(config["worker_start_ray_commands"])
    for start in (head, worker):
        # The export must come before `ray start` in the same shell command to reach it.
        assert AUTH_ENV in start.split("ray start")[0]
    assert _exported_token_path(head) == _exported_token_path(worker)


def test_token_file_is_mounted_and_private(config: dict[str, Any]) -> None:
    token_path = _exported_token_path(_ray_start(config["head_start_ray_commands"]))
    home_relative = token_path.replace("$HOME", "~")
    mounted = [remote for remote in config["file_mounts"] if home_relative.startswith(remote.rstrip("/") + "/")]
    assert mounted, f"{token_path} is not inside any file_mounts target: {list(config['file_mounts'])}"
    for setup in ("head_setup_commands", "worker_setup_commands"):
        assert any(re.search(rf"chmod 600 {re.escape(home_relative)}\b", c) for c in config[setup]), (
            f"{setup} never runs chmod 600 on {home_relative}"
        )


def test_no_ray_port_open_to_the_internet(config: dict[str, Any]) -> None:
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert rules, "the security group spec is missing"
    for rule in rules:
        public = _public_ranges(rule)
        for port in RAY_PORTS:
            assert not (public and _opens(rule, port)), f"port {port} is open to {public}: {rule}"


def test_ssh_only_from_a_user_set_range(config: dict[str, Any]) -> None:
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert all(rule.get("FromPort") == 22 and rule.get("ToPort") == 22 for rule in rules)
    cidrs = [r["CidrIp"] for rule in rules for r in rule.get("IpRanges", [])]
    assert cidrs, "no SSH source range"
    for cidr in cidrs:
        assert cidr not in ("0.0.0.0/0", "::/0"), "SSH must be limited to the user's own range"


def test_nodes_use_no_security_group_that_bypasses_the_spec(config: dict[str, Any]) -> None:
    # SecurityGroupIds on a node type would make Ray skip the group (and its rules) above.
    for name, node_type in config["available_node_types"].items():
        assert "SecurityGroupIds" not in node_type["node_config"], name


def test_image_is_ray_2_60(config: dict[str, Any]) -> None:
    images = [config["docker"].get(k) for k in ("image", "head_image", "worker_image") if config["docker"].get(k)]
    assert images
    for image in images:
        assert image.startswith("rayproject/ray:2.60.0-"), image


def test_project_installed_on_every_node(config: dict[str, Any]) -> None:
    for setup in ("head_setup_commands", "worker_setup_commands"):
        commands = " && ".join(config[setup])
        assert 'pip install "ray[tune]==2.60.0"' in commands
        assert "pip install -e ~/clp_tune" in commands
    assert "~/clp_tune" in config["file_mounts"]


def test_gpu_workers_scale_from_zero(config: dict[str, Any]) -> None:
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    gpu = {
        n: t
        for n, t in workers.items()
        if re.match(r"(g\d|p\d)", t["node_config"]["InstanceType"]) or t["resources"].get("GPU", 0) > 0
    }
    assert gpu, "no GPU worker type"
    for node_type in workers.values():
        assert node_type["min_workers"] == 0
        assert 0 < node_type["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0 and config["upscaling_speed"] > 0


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.pop("head_start_ray_commands"), id="launcher-default-start"),
        pytest.param(
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ),
            id="dashboard-range-open",
        ),
        pytest.param(
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
            ),
            id="all-open-ipv6",
        ),
        pytest.param(
            lambda c: c.update(
                worker_start_ray_commands=[x.replace(AUTH_ENV, "") for x in c["worker_start_ray_commands"]]
            ),
            id="worker-without-auth",
        ),
        pytest.param(
            lambda c: c.update(setup_commands=[x.replace("chmod 600", "chmod 644") for x in c["setup_commands"]]),
            id="token-readable",
        ),
        pytest.param(lambda c: c["docker"].update(image="rayproject/ray-ml:2.30.0-py310-gpu"), id="ray-ml-image"),
    ],
)
def test_checks_catch_unsafe_edits(mutate: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unsafe edit of cluster.yaml must make at least one check above fail."""
    raw = _raw()
    mutate(raw)
    config = _prepare(raw, monkeypatch)
    checks = [
        test_dashboard_binds_to_localhost_only,
        test_token_auth_on_every_node,
        test_token_file_is_mounted_and_private,
        test_no_ray_port_open_to_the_internet,
        test_image_is_ray_2_60,
    ]
    failures = 0
    for check in checks:
        try:
            check(config)
        except AssertionError:
            failures += 1
    assert failures, "an unsafe edit passed every check"
