"""FedRouter: task-centric personalisation by two-level clustering (Talasso et al., arXiv 2604.00050).

Clients cluster their samples by embedding and train one adapter per local
cluster; the server clusters the local centroids into global clusters, keeps one
adapter per global cluster, averages each over the local adapters mapped to it,
and sends every client only the adapters of its clusters. At evaluation a router
sends each test sample to the adapter of its nearest global centroid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedrouter_app.checkpoint import StrategyState
from fedrouter_app.cluster_defences import capped_weights, leave_one_out_distances, outliers
from fedrouter_app.clustering import (
    kmeans,
    majority,
    match_clusters,
    nearest,
    scores_from_counts,
    squared_distances,
    unit_rows,
)
from fedrouter_app.model.loading import hidden_size
from fedrouter_app.model.lora import LoraState, LoraTemplate, copy_state
from fedrouter_app.records import (
    CONFIG,
    NUM_EXAMPLES,
    InvalidReplyError,
    adapter_record,
    matrix_record,
    read_count,
    read_matrix,
)
from fedrouter_app.registry import MethodConfig, register_strategy
from fedrouter_app.robust_aggregation import Aggregate
from fedrouter_app.rounds import Communicator, Reply, sample_clients
from fedrouter_app.routing_diagnosis import check_diagnosis_metrics, diagnosis_summary
from fedrouter_app.routing_fallback import FALLBACK_MODES, check_fallback_metrics, fallback_summary
from fedrouter_app.seeding import derive_seed
from fedrouter_app.settings import RunConfig, one_of, require
from fedrouter_app.strategies.base import Strategy

REGISTER = "query.register"
CENTROIDS = "centroids"
# method.drift_check: the config flag of a registration query that asks an already registered client to check its
# data, and the metric of a client whose local clusters still fit them (it sends no centroids).
CHECK = "fedrouter.check"
UNCHANGED = "fedrouter.unchanged"
ROUTER_MODES = ("global", "local")
GLOBAL_FEATURES = ("centroids", "adapters", "both")
# method.embedding -> the pooling of fedrouter_app.embedding.embed_texts.
EMBEDDING_POOLING = {"mean": "mean", "last_token": "last", "prefix": "prefix"}


def global_adapter_name(k: int) -> str:
    """Record name of global cluster ``k``'s adapter in instructions."""
    return f"global.{k}"


def local_adapter_name(j: int) -> str:
    """Record name of the adapter trained for local cluster ``j`` in replies."""
    return f"adapter.{j}"


@dataclass
class FedRouterConfig(MethodConfig):
    """Settings of ``fedrouter``."""

    n_local: int = field(metadata={"help": "Local clusters (adapters) per client."})
    n_global: int = field(metadata={"help": "Global clusters (adapters on the server)."})
    clustering: str = field(
        metadata={"help": "'kmeans' on embeddings, or 'oracle': local and global clusters are the true tasks."}
    )
    schedule: str = field(
        metadata={"help": "'round_robin': one local cluster per round (reference Flower code); 'all': every one."}
    )
    weighting: str = field(metadata={"help": "Aggregation weight: 'cluster_size', 'client_size' or 'uniform'."})
    router: str = field(
        metadata={
            "help": "Routing of the headline metrics: 'global' (all clusters), 'local' or 'fallback' (the "
            "router-fallback view; needs router_fallback)."
        }
    )
    registration_fraction: float = field(
        metadata={"help": "Fraction of clients whose centroids form the global clustering; the rest join later."}
    )
    recluster_every: int = field(
        metadata={"help": "Re-run global clustering every k rounds, keeping adapter identities; 0 never."}
    )
    report_task_stats: bool = field(
        metadata={"help": "Clients report true-task counts per cluster (evaluation metadata: ARI, purity, routing)."}
    )
    embed_batch_size: int = field(metadata={"help": "Texts per forward pass when embedding."})
    min_cluster_size: int = field(
        metadata={
            "help": "Privacy: a local cluster with fewer training samples is merged into its nearest other cluster "
            "before registration, so no shared centroid summarises fewer samples; 1 shares every cluster."
        }
    )
    centroid_clip: float = field(
        metadata={
            "help": "Privacy: L2 bound C on each sample embedding before a shared centroid is computed (only with "
            "centroid_noise > 0); one sample then moves a cluster's sum by at most C."
        }
    )
    centroid_noise: float = field(
        metadata={
            "help": "Privacy: noise multiplier z; each shared centroid (mean of n clipped embeddings) gets Gaussian "
            "noise of std z * C / n per coordinate (the Gaussian mechanism on the cluster's sum); 0 shares exact means."
        }
    )
    global_features: str = field(
        default="centroids",
        metadata={
            "help": "What the server clusters local clusters by: 'centroids' (their data centroids, the authors' "
            "code), 'adapters' (the unit-normalised update of each local adapter after a first training from the "
            "initial adapter, in which every local cluster trains; the paper's wording) or 'both' (the unit-normalised "
            "centroid and update, concatenated). Routing always uses the data centroids."
        },
    )
    embedding: str = field(
        default="mean",
        metadata={
            "help": "A sample's embedding (local clustering and routing): 'mean' over the instruction's tokens, "
            "'last_token' (the last token's state) or 'prefix' (mean over the instruction's leading task text only)."
        },
    )
    embedding_layer: int | None = field(
        default=None,
        metadata={
            "help": "Hidden state embedded: null, the last one (after the final norm); an integer indexes the "
            "model's hidden states (0: token embeddings, i: block i's output; negative counts from the end)."
        },
    )

    drift_check: bool = field(
        default=False,
        metadata={
            "help": "Data drift: before each training round (from round 2) registered clients check whether their "
            "training data still fit their local centroids; one whose mean sample-to-nearest-centroid distance "
            "exceeds drift_threshold x the value at its clustering clusters again and registers again (mapped to "
            "the nearest global clusters, which do not change)."
        },
    )
    drift_threshold: float = field(
        default=1.25,
        metadata={"help": "drift_check: ratio of mean nearest-centroid distance to its value at clustering (> 0)."},
    )
    max_client_share: float = field(
        default=1.0,
        metadata={
            "help": "Defence: a client's weight in a global cluster's mean is capped at this share of the cluster's "
            "total weight (e.g. 0.5), so inflated cluster sizes buy no more; 1.0: no cap."
        },
    )
    centroid_outlier_threshold: float = field(
        default=0.0,
        metadata={
            "help": "Defence: a registered centroid whose distance to the nearest global cluster mean (computed "
            "without it) exceeds this x the median such distance of the registration is refused: its client trains "
            "nothing for that local cluster. 0: off. Needs clustering=kmeans, global_features=centroids."
        },
    )
    router_fallback: str = field(
        default="soft",
        metadata={
            "help": "This project's extension (label-free): a test sample whose nearest global centroid is further "
            "than the client's calibrated threshold falls back from one routed adapter to a mixture of all of them: "
            "'soft' (per-row softmax(-distance / tau) weights), 'average' (1/K each, the mean of the LoRA deltas). "
            "Reported as the extra view router-fallback beside the plain ones; 'none': the paper's hard routing only."
        },
    )
    fallback_quantile: float = field(
        default=0.95,
        metadata={
            "help": "router_fallback: the threshold is this quantile, in (0, 1], of the distances from the client's "
            "own training samples to their nearest global centroid (0.95: about 5% of in-distribution samples "
            "would fall back; 1: the farthest training sample)."
        },
    )
    fallback_margin: float = field(
        default=1.0,
        metadata={"help": "router_fallback: a sample falls back beyond this x the calibrated threshold (> 0)."},
    )
    fallback_temperature: float = field(
        default=1.0,
        metadata={
            "help": "router_fallback=soft: tau of the softmax weights is this x the calibrated threshold (> 0); "
            "larger mixes more evenly."
        },
    )
    local_router_view: bool = field(
        default=True,
        metadata={
            "help": "Also score the 'local' router (each sample to the nearest of the client's own clusters) as the "
            "view router-local; false skips that scoring where method.router is not 'local'."
        },
    )
    diagnose_routing: str = field(
        default="held_out",
        metadata={
            "help": "Why routing fails, measured (diagnosis samples cost about K+2 times more to evaluate): clients "
            "score each diagnosed test sample under every global adapter, their average and the base model, and "
            "report per task diag.<task>.* means (each cluster, average, base, routed and the per-sample best, "
            "oracle). 'off', 'held_out' (samples of scenario.unseen_tasks only) or 'all'."
        },
    )

    def validate(self) -> None:
        require(self.n_local >= 1 and self.n_global >= 1, "method.n_local and method.n_global must be >= 1")
        one_of("method.clustering", self.clustering, ("kmeans", "oracle"))
        one_of("method.schedule", self.schedule, ("round_robin", "all"))
        one_of("method.weighting", self.weighting, ("cluster_size", "client_size", "uniform"))
        one_of("method.router", self.router, (*ROUTER_MODES, "fallback"))
        require(0 < self.registration_fraction <= 1, "method.registration_fraction must be in (0, 1]")
        require(self.recluster_every >= 0, "method.recluster_every must be >= 0")
        require(
            self.clustering != "oracle" or self.report_task_stats,
            "method.clustering=oracle needs method.report_task_stats=true (the true tasks)",
        )
        require(self.min_cluster_size >= 1, f"method.min_cluster_size must be >= 1, got {self.min_cluster_size}")
        require(self.centroid_noise >= 0, f"method.centroid_noise must be >= 0, got {self.centroid_noise}")
        require(self.centroid_clip > 0, f"method.centroid_clip must be > 0, got {self.centroid_clip}")
        require(self.drift_threshold > 0, f"method.drift_threshold must be > 0, got {self.drift_threshold}")
        one_of("method.global_features", self.global_features, GLOBAL_FEATURES)
        require(
            0 < self.max_client_share <= 1, f"method.max_client_share must be in (0, 1], got {self.max_client_share}"
        )
        require(
            self.centroid_outlier_threshold >= 0,
            f"method.centroid_outlier_threshold must be >= 0 (0: off), got {self.centroid_outlier_threshold}",
        )
        require(
            self.centroid_outlier_threshold == 0
            or (self.clustering == "kmeans" and self.global_features == "centroids"),
            "method.centroid_outlier_threshold needs method.clustering=kmeans and method.global_features=centroids",
        )
        one_of("method.embedding", self.embedding, tuple(EMBEDDING_POOLING))
        one_of("method.router_fallback", self.router_fallback, FALLBACK_MODES)
        one_of("method.diagnose_routing", self.diagnose_routing, ("off", "held_out", "all"))
        require(
            0 < self.fallback_quantile <= 1, f"method.fallback_quantile must be in (0, 1], got {self.fallback_quantile}"
        )
        require(self.fallback_margin > 0, f"method.fallback_margin must be > 0, got {self.fallback_margin}")
        require(
            self.fallback_temperature > 0,
            f"method.fallback_temperature (tau) must be > 0, got {self.fallback_temperature}",
        )
        require(
            self.router != "fallback" or self.router_fallback != "none",
            "method.router=fallback needs method.router_fallback=soft or average",
        )
        if self.global_features != "centroids":
            require(
                self.clustering == "kmeans",
                f"method.global_features={self.global_features} needs method.clustering=kmeans",
            )
            require(
                self.recluster_every == 0,
                f"method.global_features={self.global_features} clusters once, after the first training; "
                "method.recluster_every must be 0",
            )

    def validate_run(self, cfg: RunConfig) -> None:
        """Clusters against what the scenario gives each client, checked before any client starts."""
        if self.clustering == "oracle":
            return
        scenario = cfg.scenario
        fewest = scenario.train_examples_per_client if scenario.kind == "window" else scenario.min_train_examples
        require(
            self.n_local <= fewest,
            f"method.n_local={self.n_local} exceeds the {fewest} training examples a client may hold "
            f"(scenario.{'train_examples_per_client' if scenario.kind == 'window' else 'min_train_examples'})",
        )
        registered = max(1, round(self.registration_fraction * cfg.num_clients))
        require(
            self.n_global <= self.n_local * registered,
            f"method.n_global={self.n_global} exceeds the {self.n_local * registered} local centroids the "
            f"registration gives (method.n_local={self.n_local} x {registered} registering clients)",
        )
        if self.global_features != "centroids":
            trained = max(1, round(cfg.fraction_train * cfg.num_clients))
            require(
                self.n_global <= self.n_local * trained,
                f"method.n_global={self.n_global} exceeds the {self.n_local * trained} local adapters the first "
                f"round trains (method.n_local={self.n_local} x {trained} clients, fraction_train), which "
                f"method.global_features={self.global_features} clusters",
            )


@dataclass
class ClientClusters:
    """What the server knows of one client's local clusters."""

    centroids: np.ndarray
    sizes: list[int]
    tasks: list[dict[str, int]]
    assignment: list[int] = field(default_factory=list)
    # Local clusters refused as outliers (method.centroid_outlier_threshold): assigned -1, never trained.
    rejected: set[int] = field(default_factory=set)

    def accepted(self) -> list[int]:
        """The local clusters the server took (all but the refused ones)."""
        return [j for j in range(len(self.sizes)) if j not in self.rejected]


@register_strategy("fedrouter", config=FedRouterConfig)
class FedRouter(Strategy):
    """Two-level clustering, per-global-cluster FedAvg, per-client payloads, routed evaluation."""

    uses_task_labels_when: ClassVar[dict[str, object]] = {"clustering": "oracle"}  # oracle clusters: the true tasks

    def __init__(self, cfg: RunConfig, template: LoraTemplate) -> None:
        super().__init__(cfg, template)
        self.method: FedRouterConfig = cfg.method
        self.registry: dict[int, ClientClusters] = {}
        self.centroids = np.zeros((0, 0), dtype=np.float32)
        self.cluster_tasks: list[str] = []
        self.bank: list[LoraState] = []
        self.trained: dict[int, list[int]] = {}
        self.reclustered: dict[str, Any] = {}
        self.joined: dict[int, list[int]] = {}
        self.reregistered: dict[int, list[int]] = {}
        # global_features adapters/both: the global clustering waits for the first training's adapters. Never
        # true in a checkpoint, which is written after a training round, whose aggregation clusters.
        self.features_pending = False
        self.dim = hidden_size(cfg.model)
        # method.centroid_outlier_threshold: the median outlier distance of the setup's registration, which later
        # registrations (late joiners, drift) are measured against; None until the global clustering.
        self.outlier_scale: float | None = None
        # Oracle clients have one cluster per own task, which may exceed n_local.
        self.max_local = max(self.method.n_local, len(cfg.data.tasks))

    # Registration and clustering.

    def setup(self, comm: Communicator, clients: Sequence[int]) -> dict[str, Any]:
        cohort = sample_clients(clients, self.method.registration_fraction, self.cfg.seed, 0, "register")
        self.register(cohort)
        if not self.registry:
            raise RuntimeError("no client completed registration; cannot build global clusters")
        if self.method.global_features != "centroids":
            self.defer_clustering()
            self.bank = [copy_state(self.initial_adapter) for _ in range(self.method.n_global)]
            return {"registered": sorted(self.registry)}  # the clustering is reported by the first training round
        self.cluster_globally()
        self.bank = [copy_state(self.initial_adapter) for _ in range(len(self.centroids))]
        return {"registered": sorted(self.registry), "clustering": self.clustering_report()}

    def register(self, clients: Sequence[int]) -> list[int]:
        """Collect local centroids of ``clients``; returns those that answered."""
        if not clients:
            return []
        assert self.comm is not None, "the round loop attaches its communicator"
        replies = self.comm.send(REGISTER, {c: RecordDict() for c in clients})
        for reply in replies:
            try:
                self.registry[reply.client] = self._read_registration(reply)
            except InvalidReplyError as err:
                self.comm.reject(REGISTER, reply.client, str(err))
        return [r.client for r in replies if r.client in self.registry]

    def _read_registration(self, reply: Reply) -> ClientClusters:
        if CENTROIDS not in reply.content.array_records:
            raise InvalidReplyError("registration reply has no centroids")
        centroids = read_matrix(
            reply.content.array_records[CENTROIDS], CENTROIDS, max_rows=self.max_local, cols=self.dim
        )
        n = centroids.shape[0]
        # A cluster smaller than min_cluster_size should never have been shared (clients merge those away).
        smallest = self.method.min_cluster_size
        try:
            sizes = [read_count(reply.metrics, f"cluster.{j}.size", minimum=smallest) for j in range(n)]
        except InvalidReplyError as err:
            raise InvalidReplyError(f"registration needs a positive size >= {smallest} per cluster: {err}") from None
        tasks: list[dict[str, int]] = [{} for _ in range(n)]
        for key in reply.metrics:
            cluster, _, task = key.partition(".task.")
            if not task:
                continue
            j = cluster.removeprefix("cluster.")
            if not cluster.startswith("cluster.") or not j.isdigit() or int(j) >= n or task not in self.cfg.data.tasks:
                raise InvalidReplyError(f"registration metric {key[:80]!r} names no shared cluster and run task")
            tasks[int(j)][task] = read_count(reply.metrics, key)
        return ClientClusters(centroids=centroids, sizes=sizes, tasks=tasks)

    def cluster_globally(self) -> None:
        """Global clusters from every registered local centroid, then each local cluster's assignment."""
        items, points = self._local_clusters()
        if self.method.clustering == "oracle":
            task_of = [majority({0: self.registry[c].tasks[j]})[0] for c, j in items]
            self.cluster_tasks = sorted(set(task_of))
            labels = np.array([self.cluster_tasks.index(t) for t in task_of])
            self.centroids = np.stack([points[labels == k].mean(axis=0) for k in range(len(self.cluster_tasks))])
        else:
            if len(points) < self.method.n_global:
                raise RuntimeError(
                    f"method.n_global={self.method.n_global} exceeds the {len(points)} local clusters registered "
                    f"(clients that failed registration, or clusters merged below method.min_cluster_size, share none)"
                )
            self.centroids, labels = kmeans(points, self.method.n_global, derive_seed(self.cfg.seed, "global-kmeans"))
            # One pass: the outliers of the first clustering are refused, the rest clustered again without them.
            first = self.outlier_scale is None
            if self.method.centroid_outlier_threshold > 0 and first and self.reject_outliers(items, points, labels):
                self.cluster_globally()
                return
        self._set_assignment(items, labels)

    def reject_outliers(self, items: list[tuple[int, int]], points: np.ndarray, labels: np.ndarray) -> bool:
        """Refuse registered centroids far from every global cluster (``method.centroid_outlier_threshold``).

        Sets :attr:`outlier_scale` (the median distance), which later
        registrations are measured against; returns whether any centroid was
        refused.
        """
        distances = leave_one_out_distances(points, labels)
        if self.outlier_scale is None:
            self.outlier_scale = float(np.median(distances))
        refused = outliers(distances, self.method.centroid_outlier_threshold, self.outlier_scale)
        for i in np.flatnonzero(refused):
            self.refuse(*items[i], float(distances[i]))
        return bool(refused.any())

    def refuse(self, client: int, j: int, distance: float) -> None:
        """Refuse ``client``'s local cluster ``j`` as an outlier, saying why."""
        self.registry[client].rejected.add(j)
        assert self.comm is not None, "the round loop attaches its communicator"
        self.comm.reject(
            REGISTER,
            client,
            f"local cluster {j}: centroid at distance {distance:.4g} from the nearest global cluster, over "
            f"{self.method.centroid_outlier_threshold:g} x the median {self.outlier_scale:.4g} "
            "(method.centroid_outlier_threshold); it trains nothing for it",
        )

    def defer_clustering(self) -> None:
        """Until the first training's adapters arrive: every local cluster maps to global cluster 0.

        Every global adapter is still the initial one, so where a local cluster
        or a test sample goes cannot matter yet; all global centroids are the
        mean local centroid, so an evaluation before the first round routes
        everything to cluster 0.
        """
        items, points = self._local_clusters()
        self.centroids = np.repeat(points.mean(axis=0, keepdims=True), self.method.n_global, axis=0)
        self._set_assignment(items, np.zeros(len(items), dtype=np.int64))
        self.features_pending = True

    def cluster_by_features(self, replies: Sequence[Reply]) -> None:
        """Global clusters from the first training's local adapters (``global_features`` adapters or both).

        Every local cluster a valid reply trained is a point: its adapter's
        update from the initial adapter (and its data centroid, with ``both``),
        see :func:`global_clustering_features`. A global cluster's routing
        centroid is the mean data centroid of its local clusters. Registered
        clients without a clustered adapter (not sampled, or their reply
        refused) are mapped like late joiners, to the nearest routing centroid.
        """
        items = [(r.client, j) for r in replies for j in self.trained.get(r.client, [])]
        if len(items) < self.method.n_global:
            raise RuntimeError(
                f"method.n_global={self.method.n_global} exceeds the {len(items)} local adapters the first training "
                f"returned, which method.global_features={self.method.global_features} clusters"
            )
        adapters = {r.client: r.adapters for r in replies}
        updates = np.stack([adapter_update(adapters[c][local_adapter_name(j)], self.initial_adapter) for c, j in items])
        centroids = np.stack([self.registry[c].centroids[j] for c, j in items])
        features = global_clustering_features(self.method.global_features, centroids, updates)
        _, labels = kmeans(features, self.method.n_global, derive_seed(self.cfg.seed, "global-kmeans"))
        # k-means leaves a cluster empty only when there are fewer distinct points than clusters; the mean of
        # every centroid then keeps that cluster's routing centroid defined.
        self.centroids = np.stack(
            [(centroids[labels == k] if (labels == k).any() else centroids).mean(axis=0) for k in range(len(self.bank))]
        ).astype(np.float32)
        self._set_assignment(items, labels)
        for client in sorted(set(self.registry) - {c for c, _ in items}):
            self.assign(client)
        for client in self.joined:
            self.joined[client] = list(self.registry[client].assignment)
        self.features_pending = False

    def _local_clusters(self) -> tuple[list[tuple[int, int]], np.ndarray]:
        items = [(client, j) for client in sorted(self.registry) for j in self.registry[client].accepted()]
        if not items:
            raise RuntimeError("every registered centroid was refused (method.centroid_outlier_threshold)")
        return items, np.stack([self.registry[c].centroids[j] for c, j in items])

    def _set_assignment(self, items: list[tuple[int, int]], labels: np.ndarray) -> None:
        for client in self.registry:
            info = self.registry[client]
            info.assignment = [-1 if j in info.rejected else 0 for j in range(len(info.sizes))]
        for (client, j), k in zip(items, labels, strict=True):
            self.registry[client].assignment[j] = int(k)

    def assign(self, client: int) -> None:
        """Map a late client's local clusters to the nearest existing global clusters."""
        info = self.registry[client]
        if self.method.clustering == "oracle":
            known = {t: k for k, t in enumerate(self.cluster_tasks)}
            info.assignment = [
                known.get(majority({0: counts})[0], int(nearest(info.centroids[j : j + 1], self.centroids)[0]))
                for j, counts in enumerate(info.tasks)
            ]
        else:
            info.assignment = [int(k) for k in nearest(info.centroids, self.centroids)]
            if self.method.centroid_outlier_threshold > 0 and self.outlier_scale is not None:
                # Not part of the clustering: its distance to the nearest global centroid is already "without it".
                distances = np.sqrt(squared_distances(info.centroids, self.centroids).min(axis=1))
                far = outliers(distances, self.method.centroid_outlier_threshold, self.outlier_scale)
                for j in np.flatnonzero(far):
                    self.refuse(client, int(j), float(distances[j]))
            info.assignment = [-1 if j in info.rejected else k for j, k in enumerate(info.assignment)]

    def recluster(self) -> dict[str, Any]:
        """Global k-means again over every registered client (late joiners included).

        Warm-started from the current centroids; each new cluster inherits the
        adapter of the old cluster it is matched to (Hungarian on centroid
        distances), so adapters keep their identity. Oracle clusters are tasks
        and never change.
        """
        if self.method.clustering == "oracle":
            return {}
        items, points = self._local_clusters()
        old_centroids, old_bank = self.centroids, self.bank
        self.centroids, labels = kmeans(
            points, len(old_centroids), derive_seed(self.cfg.seed, "global-kmeans"), init=old_centroids
        )
        perm = match_clusters(old_centroids, self.centroids)
        self.bank = [old_bank[perm[k]] for k in range(len(self.centroids))]
        self._set_assignment(items, labels)
        return {"matched_from": [int(p) for p in perm], "clustering": self.clustering_report()}

    def ensure_registered(self, clients: Sequence[int]) -> None:
        """Register clients seen for the first time and assign them by nearest centroid."""
        for client in self.register([c for c in clients if c not in self.registry]):
            self.assign(client)
            self.joined[client] = list(self.registry[client].assignment)

    def recheck(self, clients: Sequence[int]) -> None:
        """Ask registered ``clients`` whether their local clusters still fit their data (``method.drift_check``).

        A client answers ``fedrouter.unchanged`` (no centroids), or registers
        again with its new local clusters: read and checked as a first
        registration, they replace its old ones and are mapped to the nearest
        global centroids, as a late joiner's are (the global clusters stay).
        A client whose new registration is refused leaves the registry, so its
        next instruction asks it to register anew.
        """
        if not clients:
            return
        assert self.comm is not None, "the round loop attaches its communicator"
        replies = self.comm.send(REGISTER, {c: RecordDict({CONFIG: ConfigRecord({CHECK: True})}) for c in clients})
        for reply in replies:
            if CENTROIDS not in reply.content.array_records and reply.metrics.get(UNCHANGED) == 1:
                continue
            try:
                info = self._read_registration(reply)
            except InvalidReplyError as err:
                self.registry.pop(reply.client, None)
                self.comm.reject(REGISTER, reply.client, f"new registration: {err}")
                continue
            self.registry[reply.client] = info
            self.assign(reply.client)
            self.reregistered[reply.client] = list(info.assignment)

    # Rounds.

    def configure_train(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        known = [c for c in clients if c in self.registry]
        self.ensure_registered(clients)
        # Data cannot have changed since a registration in this round or the setup (round 0 or 1).
        if self.method.drift_check and server_round > 1:
            self.recheck(known)
        self.reclustered = {}
        if self.method.recluster_every and server_round > 1 and server_round % self.method.recluster_every == 0:
            self.reclustered = self.recluster()
        records: dict[int, ArrayRecord] = {}
        payloads: dict[int, RecordDict] = {}
        self.trained = {}
        for client in clients:
            if client not in self.registry:
                continue
            info = self.registry[client]
            accepted = info.accepted()
            if not accepted:
                continue  # every local cluster refused as an outlier: nothing to train
            # Clustering by adapters needs every local cluster's adapter once, trained from the initial adapter.
            everything = self.method.schedule == "all" or self.features_pending
            local = accepted if everything else [accepted[(server_round - 1) % len(accepted)]]
            self.trained[client] = local
            payloads[client] = self._payload(info, {info.assignment[j] for j in local}, records, {"train": local})
        return payloads

    def _payload(
        self, info: ClientClusters, clusters: set[int], records: dict[int, ArrayRecord], extra: dict[str, Any]
    ) -> RecordDict:
        for k in clusters - records.keys():
            records[k] = adapter_record(self.bank[k])
        payload = RecordDict({global_adapter_name(k): records[k] for k in sorted(clusters)})
        payload[CONFIG] = ConfigRecord(
            {"fedrouter.map": list(info.assignment), **{f"fedrouter.{k}": v for k, v in extra.items()}}
        )
        return payload

    def max_reply_adapters(self) -> int:
        return self.max_local

    def check_train_reply(self, server_round: int, reply: Reply) -> None:
        for j in self.trained.get(reply.client, []):
            self.require_adapter(reply, local_adapter_name(j))

    def check_evaluate_reply(self, server_round: int, reply: Reply) -> None:
        """Routing counts must be ``route.<mode>.<own|other>.<task>.<cluster>`` with a count; else rejected.

        So must the fallback counts and diagnosis values (:mod:`fedrouter_app.routing_fallback`,
        :mod:`fedrouter_app.routing_diagnosis`).
        """
        for key in reply.metrics:
            if key.startswith("route."):
                parsed = _route_key(key)
                if parsed is None or parsed[2] not in self.cfg.data.tasks or not 0 <= parsed[3] < len(self.bank):
                    raise InvalidReplyError(f"routing metric {key[:80]!r} names no router, run task and cluster")
                read_count(reply.metrics, key)
        check_fallback_metrics(reply.metrics, self.cfg.data.tasks)
        check_diagnosis_metrics(reply.metrics, self.cfg.data.tasks, len(self.bank))

    def _contributions(self, replies: Iterable[Reply]) -> Iterator[tuple[int, Reply, int, float]]:
        """(global cluster, reply, local cluster, weight) of every adapter the replies carry, as they are read."""
        for reply in replies:
            info = self.registry[reply.client]
            for j in self.trained.get(reply.client, []):
                weight = {
                    "cluster_size": info.sizes[j],
                    "client_size": reply.metrics[NUM_EXAMPLES],
                    "uniform": 1.0,
                }[self.method.weighting]
                yield info.assignment[j], reply, j, float(weight)

    def folds_replies(self) -> bool:
        # Clustering by trained features and the share cap need every reply of the round at once.
        return not self.features_pending and self.method.max_client_share >= 1.0 and self.streams_aggregation()

    def aggregate_train(self, server_round: int, replies: Iterable[Reply]) -> dict[str, Any]:
        clustered = self.features_pending
        if clustered:
            replies = list(replies)
            self.cluster_by_features(replies)
        contributions: Iterable[tuple[int, Reply, int, float]] = self._contributions(replies)
        factors: dict[tuple[int, int], float] = {}
        capped: dict[int, list[int]] = {}
        if self.method.max_client_share < 1.0:
            contributions = list(contributions)
            factors, capped = client_share_factors(
                [(k, reply.client, w) for k, reply, _, w in contributions], self.method.max_client_share
            )
        means: dict[int, Aggregate] = {}
        for k, reply, j, weight in contributions:
            if k not in means:
                means[k] = self.new_aggregate(self.bank[k])
            means[k].add(reply.adapters[local_adapter_name(j)], weight * factors.get((k, reply.client), 1.0))
        for k, mean in means.items():
            self.bank[k] = mean.result()
        report: dict[str, Any] = {"contributors": {str(k): mean.count for k, mean in sorted(means.items())}}
        if capped:
            report["share_capped"] = {str(k): clients for k, clients in sorted(capped.items())}
        if clustered:
            report["clustering"] = self.clustering_report()
        if self.reclustered:
            report["reclustered"] = self.reclustered
        if self.joined:
            report["joined"] = {str(c): a for c, a in sorted(self.joined.items())}
            self.joined = {}
        if self.reregistered:
            report["reregistered"] = {str(c): a for c, a in sorted(self.reregistered.items())}
            self.reregistered = {}
        return report

    def configure_evaluate(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        self.ensure_registered(clients)
        records: dict[int, ArrayRecord] = {}
        centroids = matrix_record(CENTROIDS, self.centroids)
        payloads = {}
        for client in clients:
            if client not in self.registry:
                continue
            payload = self._payload(
                self.registry[client], set(range(len(self.bank))), records, {"router": self.method.router}
            )
            payload[CENTROIDS] = centroids
            payloads[client] = payload
        return payloads

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, Any]:
        """Routing confusion (true task -> global cluster) and accuracy, per router mode.

        A sample is routed right when its cluster mostly holds its task. Accuracy
        counts tasks some client trained on, overall and split into the
        evaluating client's own tasks and the others.
        """
        right = self.cluster_majority()
        out: dict[str, Any] = {}
        for mode in ROUTER_MODES:
            confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for reply in replies:
                for key, value in reply.metrics.items():
                    parsed = _route_key(key)
                    if parsed is None or parsed[0] != mode:
                        continue
                    _, whose, task, cluster = parsed
                    k = str(cluster)
                    confusion[task][k] += int(value)
                    if task in right.values():
                        for group in (whose, "all"):
                            hits[group][0] += int(value) * (right.get(int(k)) == task)
                            hits[group][1] += int(value)
            if not confusion:  # this router was not scored (method.local_router_view=false)
                continue
            out[mode] = {
                **{
                    ("accuracy" if g == "all" else f"accuracy_{g}"): (h[0] / h[1] if h[1] else float("nan"))
                    for g, h in sorted(hits.items())
                },
                "confusion": {
                    t: dict(sorted(r.items(), key=lambda kv: int(kv[0]))) for t, r in sorted(confusion.items())
                },
            }
        # method.router_fallback and method.diagnose_routing: pooled only when clients reported them.
        extensions = {"fallback": fallback_summary(r.metrics for r in replies)}
        extensions["diagnosis"] = diagnosis_summary(r.metrics for r in replies)
        return {"routing": out, **{name: value for name, value in extensions.items() if value}}

    # Reports.

    def cluster_counts(self) -> dict[int, dict[str, int]]:
        """True-task counts of the training samples in each global cluster."""
        table: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for info in self.registry.values():
            for j, k in enumerate(info.assignment):
                if k < 0:
                    continue  # refused: in no global cluster
                for task, n in info.tasks[j].items():
                    table[k][task] += n
        return table

    def cluster_majority(self) -> dict[int, str]:
        """The task each global cluster mostly holds (the 'right' cluster of that task)."""
        return majority(self.cluster_counts())

    def clustering_report(self) -> dict[str, Any]:
        local = [
            scores_from_counts({j: counts for j, counts in enumerate(info.tasks)}) for info in self.registry.values()
        ]
        return {
            "n_global": len(self.centroids),
            "assignment": {str(c): info.assignment for c, info in sorted(self.registry.items())},
            "cluster_sizes": {str(c): info.sizes for c, info in sorted(self.registry.items())},
            **(
                {"refused": {str(c): sorted(i.rejected) for c, i in sorted(self.registry.items()) if i.rejected}}
                if any(i.rejected for i in self.registry.values())
                else {}
            ),
            "majority_task": {str(k): t for k, t in sorted(self.cluster_majority().items())},
            "global": scores_from_counts(self.cluster_counts()),
            "local_mean": {m: float(np.nanmean([s[m] for s in local])) for m in ("ari", "purity")} if local else {},
            "local": {str(c): s for c, s in zip(sorted(self.registry), local, strict=True)},
        }

    def state_dict(self) -> StrategyState:
        clients = sorted(self.registry)
        local = [self.registry[c].centroids for c in clients]
        return StrategyState(
            adapters=self.adapters(),
            arrays={
                "centroids": self.centroids,
                "local_centroids": np.concatenate(local) if local else np.zeros((0, self.dim), np.float32),
            },
            meta={
                **({"outlier_scale": self.outlier_scale} if self.outlier_scale is not None else {}),
                "cluster_tasks": self.cluster_tasks,
                "registry": [
                    [c, self.registry[c].sizes, self.registry[c].tasks, self.registry[c].assignment] for c in clients
                ],
            },
        )

    def load_state_dict(self, state: StrategyState) -> None:
        self.centroids = state.arrays["centroids"]
        self.outlier_scale = state.meta.get("outlier_scale")
        self.cluster_tasks = list(state.meta["cluster_tasks"])
        self.bank = [state.adapters[f"cluster-{k}"] for k in range(len(self.centroids))]
        local, start = state.arrays["local_centroids"], 0
        self.registry = {}
        for client, sizes, tasks, assignment in state.meta["registry"]:
            n = len(sizes)
            self.registry[int(client)] = ClientClusters(
                centroids=local[start : start + n],
                sizes=sizes,
                tasks=tasks,
                assignment=assignment,
                rejected={j for j, k in enumerate(assignment) if k < 0},
            )
            start += n

    def adapters(self) -> dict[str, LoraState]:
        return {f"cluster-{k}": state for k, state in enumerate(self.bank)}

    def summary(self) -> str:
        m = self.method
        return (
            f"FedRouter(n_local={m.n_local}, n_global={m.n_global}, clustering={m.clustering}, "
            f"schedule={m.schedule}, weighting={m.weighting}, router={m.router})"
        )


def client_share_factors(
    contributions: Sequence[tuple[int, int, float]], max_share: float
) -> tuple[dict[tuple[int, int], float], dict[int, list[int]]]:
    """Per (global cluster, client), the factor its weights are scaled by under ``method.max_client_share``.

    ``contributions`` are (cluster, client, weight), a client possibly
    several times in one cluster (several local clusters mapped to it): its
    total weight there is capped (:func:`capped_weights`) and each of its
    weights scaled alike. Also returns, per cluster, the clients that were
    capped. With ``max_share`` 1 every factor is exactly 1.
    """
    totals: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for k, client, weight in contributions:
        totals[k][client] += weight
    factors: dict[tuple[int, int], float] = {}
    capped: dict[int, list[int]] = {}
    for k, by_client in totals.items():
        clients = sorted(by_client)
        old = [by_client[c] for c in clients]
        new = capped_weights(old, max_share)
        for client, before, after in zip(clients, old, new, strict=True):
            factors[(k, client)] = after / before if before > 0 and after != before else 1.0
        # Capped: whose share went down (a sole contributor keeps its whole share, whatever its weight).
        lower = [c for c, b, a in zip(clients, old, new, strict=True) if a / sum(new) < b / sum(old) - 1e-12]
        if lower:
            capped[k] = lower
    return factors, capped


def adapter_update(state: LoraState, start: LoraState) -> np.ndarray:
    """``state - start`` over every LoRA tensor, sorted by name, as one float32 vector."""
    return np.concatenate([(state[key] - start[key]).ravel() for key in sorted(start)]).astype(np.float32)


def global_clustering_features(kind: str, centroids: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """Points the server's k-means clusters local clusters by (``method.global_features``).

    ``centroids``: the data centroids as they are. ``adapters``: the adapter
    updates scaled to unit length, so k-means compares their directions
    (squared distance ``2 - 2 cos``), not how far a cluster's training moved.
    ``both``: the unit centroid and the unit update side by side; each half
    has norm 1, so each contributes a squared distance in ``[0, 4]`` and
    neither dominates by its dimension or scale.
    """
    if kind == "centroids":
        return centroids
    if kind == "adapters":
        return unit_rows(updates)
    if kind == "both":
        return np.concatenate([unit_rows(centroids), unit_rows(updates)], axis=1)
    raise ValueError(f"unknown global features {kind!r}; valid: {', '.join(GLOBAL_FEATURES)}")


def _route_key(key: str) -> tuple[str, str, str, int] | None:
    """``route.<mode>.<own|other>.<task>.<cluster>`` as (mode, whose, task, cluster); None if malformed."""
    parts = key.split(".")
    if len(parts) < 5 or parts[0] != "route" or parts[1] not in ROUTER_MODES or parts[2] not in ("own", "other"):
        return None
    if not parts[-1].isdigit():
        return None
    return parts[1], parts[2], ".".join(parts[3:-1]), int(parts[-1])
