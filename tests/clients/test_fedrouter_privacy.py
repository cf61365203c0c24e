"""A FedRouter client's registration under the privacy settings."""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict

from fedrouter_app.clients.fedrouter.client import FedRouterClient
from fedrouter_app.federation.records import CENTROIDS

DUAL = ("method=fedrouter", "scenario=dual", "scenario.train_examples_per_client=48")


def test_registration_shares_noisy_centroids_of_big_enough_clusters(make_env):
    overrides = (*DUAL, "method.min_cluster_size=30", "method.centroid_noise=1.0", "method.centroid_clip=5.0")
    env = make_env(*overrides)
    private = FedRouterClient(env).handle("query", "register", RecordDict())
    # Two clusters of 24 (method.n_local=2) are below 30: they become one of 48, and its centroid carries noise.
    assert private["metrics"]["num-clusters"] == 1
    assert private["metrics"]["cluster.0.size"] == 48
    shared = private[CENTROIDS][CENTROIDS].numpy()
    assert shared.shape == (1, env.model().hidden_size)
    # The same client registering again (e.g. after a restart, fresh state) sends the same release.
    again = FedRouterClient(make_env(*overrides)).handle("query", "register", RecordDict())
    np.testing.assert_array_equal(again[CENTROIDS][CENTROIDS].numpy(), shared)
