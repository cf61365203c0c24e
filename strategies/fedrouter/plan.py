"""The state one FedRouter round hands from its configuration to its aggregation, and the membership changes
reported with the next training round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainPlan:
    """What :meth:`FedRouter.configure_train` decided for one training round.

    Made fresh by each ``configure_train`` and read by the same round's reply
    checks and aggregation; nothing of it outlives the round.

    Attributes
    ----------
    trained : dict
        Client -> the local clusters it was asked to train (each reply must carry exactly their adapters).
    clusters_by_features : bool
        This round's replies make the global clustering (``method.global_features`` adapters or both: the
        first training round after registration).
    reclustered : dict
        What re-clustering at the start of the round did (``method.recluster_every``); empty if it did not run.
    """

    trained: dict[int, list[int]] = field(default_factory=dict)
    clusters_by_features: bool = False
    reclustered: dict[str, Any] = field(default_factory=dict)


@dataclass
class MembershipChanges:
    """Clients whose local clusters were mapped since the last training report: late joiners and re-registrations
    after drift, each with its assignment (local cluster -> global cluster). Reported once, then cleared."""

    joined: dict[int, list[int]] = field(default_factory=dict)
    reregistered: dict[int, list[int]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The round report's ``joined`` and ``reregistered`` (those not empty); clears both."""
        out = {
            name: {str(c): a for c, a in sorted(clients.items())}
            for name, clients in (("joined", self.joined), ("reregistered", self.reregistered))
            if clients
        }
        self.joined, self.reregistered = {}, {}
        return out
