"""FedRouter: task-centric personalisation by two-level clustering (Talasso et al., arXiv 2604.00050).

Clients cluster their samples by embedding and train one adapter per local
cluster; the server clusters the local centroids into global clusters, keeps one
adapter per global cluster, averages each over the local adapters mapped to it,
and sends every client only the adapters of its clusters. At evaluation a router
sends each test sample to the adapter of its nearest global centroid.

The package: :mod:`.config` (settings, names), :mod:`.clustering` (registration and the global clustering),
:mod:`.reports` (routing and clustering reports), :mod:`.strategy` (the round hooks).
"""

# Importing the package registers the method (the registry imports every method package).
from fedrouter_app.strategies.fedrouter.strategy import FedRouter

__all__ = ["FedRouter"]
