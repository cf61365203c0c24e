"""FedRouter's client side: local clustering, one adapter per local cluster, routed evaluation.

The package: :mod:`.client` (registration, training and the routed evaluation of the paper's method) and
:mod:`.fallback` (this project's routing fallback and routing diagnosis, both off by default).
"""

# Importing the package registers the method's client (the registry imports every method package).
from fedrouter_app.clients.fedrouter.client import FedRouterClient

__all__ = ["FedRouterClient"]
