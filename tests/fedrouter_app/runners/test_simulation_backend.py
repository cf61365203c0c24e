"""The Ray backend config of in-process simulations: local Ray or an existing cluster by address."""

import pytest

from fedrouter_app.runners.simulation import backend_config, simulate


def test_local_ray_gets_the_cpu_count():
    config = backend_config(num_cpus=2, cpus_per_client=1)
    assert config["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}
    assert config["init_args"]["num_cpus"] == 2
    # A new local instance, never a cluster that `ray start` left running on the machine.
    assert config["init_args"]["address"] == "local"


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "head-node.example.org:6379", "ray://10.0.0.5:10001"])
def test_an_existing_cluster_is_joined_by_address_without_a_cpu_count(address):
    init_args = backend_config(ray_address=address)["init_args"]
    assert init_args["address"] == address
    assert "num_cpus" not in init_args  # ray.init refuses num_cpus when it connects to a cluster


@pytest.mark.parametrize("address", ["", "10.0.0.5", "http://10.0.0.5:6379", "host:port", "a b:1"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(ValueError, match="invalid Ray address"):
        backend_config(ray_address=address)


def test_cpu_count_and_address_together_are_refused():
    with pytest.raises(ValueError, match="num_cpus cannot be set with ray_address"):
        backend_config(num_cpus=2, ray_address="auto")


@pytest.mark.parametrize(("num_cpus", "per_client"), [(0, 1), (2, 0), (2, -1)])
def test_non_positive_cpus_are_refused(num_cpus, per_client):
    with pytest.raises(ValueError, match="must be"):
        backend_config(num_cpus=num_cpus, cpus_per_client=per_client)


def test_ray_address_variable_is_honoured_before_anything_starts(monkeypatch):
    # RAY_ADDRESS makes the run join a cluster, so an explicit num_cpus is a mistake caught up front.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(ValueError, match="num_cpus cannot be set"):
        simulate(["num_clients=2"], num_cpus=2)
