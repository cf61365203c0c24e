"""FedRouter: task-centric personalisation by two-level clustering (Talasso et al., arXiv 2604.00050).

Clients cluster their samples by embedding and train one adapter per local
cluster; the server clusters the local centroids into global clusters, keeps one
adapter per global cluster, averages each over the local adapters mapped to it,
and sends every client only the adapters of its clusters. At evaluation a router
sends each test sample to the adapter of its nearest global centroid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedrouter_app.aggregation import WeightedMean
from fedrouter_app.checkpoint import StrategyState
from fedrouter_app.clustering import kmeans, majority, match_clusters, nearest, scores_from_counts
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
from fedrouter_app.rounds import Communicator, Reply, sample_clients
from fedrouter_app.seeding import derive_seed
from fedrouter_app.settings import RunConfig, one_of, require
from strategies.base import Strategy

REGISTER = "query.register"
CENTROIDS = "centroids"
ROUTER_MODES = ("global", "local")


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
    router: str = field(metadata={"help": "Routing of the headline metrics: 'global' (all clusters) or 'local'."})
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

    def validate(self) -> None:
        require(self.n_local >= 1 and self.n_global >= 1, "method.n_local and method.n_global must be >= 1")
        one_of("method.clustering", self.clustering, ("kmeans", "oracle"))
        one_of("method.schedule", self.schedule, ("round_robin", "all"))
        one_of("method.weighting", self.weighting, ("cluster_size", "client_size", "uniform"))
        one_of("method.router", self.router, ROUTER_MODES)
        require(0 < self.registration_fraction <= 1, "method.registration_fraction must be in (0, 1]")
        require(self.recluster_every >= 0, "method.recluster_every must be >= 0")
        require(
            self.clustering != "oracle" or self.report_task_stats,
            "method.clustering=oracle needs method.report_task_stats=true (the true tasks)",
        )
        require(self.min_cluster_size >= 1, f"method.min_cluster_size must be >= 1, got {self.min_cluster_size}")
        require(self.centroid_noise >= 0, f"method.centroid_noise must be >= 0, got {self.centroid_noise}")
        require(self.centroid_clip > 0, f"method.centroid_clip must be > 0, got {self.centroid_clip}")

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


@dataclass
class ClientClusters:
    """What the server knows of one client's local clusters."""

    centroids: np.ndarray
    sizes: list[int]
    tasks: list[dict[str, int]]
    assignment: list[int] = field(default_factory=list)


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
        self.dim = hidden_size(cfg.model)
        # Oracle clients have one cluster per own task, which may exceed n_local.
        self.max_local = max(self.method.n_local, len(cfg.data.tasks))

    # Registration and clustering.

    def setup(self, comm: Communicator, clients: Sequence[int]) -> dict[str, Any]:
        cohort = sample_clients(clients, self.method.registration_fraction, self.cfg.seed, 0, "register")
        self.register(cohort)
        if not self.registry:
            raise RuntimeError("no client completed registration; cannot build global clusters")
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
        self._set_assignment(items, labels)

    def _local_clusters(self) -> tuple[list[tuple[int, int]], np.ndarray]:
        items = [(client, j) for client in sorted(self.registry) for j in range(len(self.registry[client].sizes))]
        return items, np.stack([self.registry[c].centroids[j] for c, j in items])

    def _set_assignment(self, items: list[tuple[int, int]], labels: np.ndarray) -> None:
        for client in self.registry:
            self.registry[client].assignment = [0] * len(self.registry[client].sizes)
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

    # Rounds.

    def configure_train(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        self.ensure_registered(clients)
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
            n = len(info.sizes)
            local = list(range(n)) if self.method.schedule == "all" else [(server_round - 1) % n]
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
        """Routing counts must be ``route.<mode>.<own|other>.<task>.<cluster>`` with a count; else rejected."""
        for key in reply.metrics:
            if key.startswith("route."):
                parsed = _route_key(key)
                if parsed is None or parsed[2] not in self.cfg.data.tasks or not 0 <= parsed[3] < len(self.bank):
                    raise InvalidReplyError(f"routing metric {key[:80]!r} names no router, run task and cluster")
                read_count(reply.metrics, key)

    def aggregate_train(self, server_round: int, replies: Sequence[Reply]) -> dict[str, Any]:
        means: dict[int, WeightedMean] = defaultdict(WeightedMean)
        for reply in replies:
            info = self.registry[reply.client]
            for j in self.trained.get(reply.client, []):
                weight = {
                    "cluster_size": info.sizes[j],
                    "client_size": reply.metrics[NUM_EXAMPLES],
                    "uniform": 1.0,
                }[self.method.weighting]
                means[info.assignment[j]].add(reply.adapters[local_adapter_name(j)], float(weight))
        for k, mean in means.items():
            self.bank[k] = mean.result()
        report: dict[str, Any] = {"contributors": {str(k): mean.count for k, mean in sorted(means.items())}}
        if self.reclustered:
            report["reclustered"] = self.reclustered
        if self.joined:
            report["joined"] = {str(c): a for c, a in sorted(self.joined.items())}
            self.joined = {}
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
            out[mode] = {
                **{
                    ("accuracy" if g == "all" else f"accuracy_{g}"): (h[0] / h[1] if h[1] else float("nan"))
                    for g, h in sorted(hits.items())
                },
                "confusion": {
                    t: dict(sorted(r.items(), key=lambda kv: int(kv[0]))) for t, r in sorted(confusion.items())
                },
            }
        return {"routing": out}

    # Reports.

    def cluster_counts(self) -> dict[int, dict[str, int]]:
        """True-task counts of the training samples in each global cluster."""
        table: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for info in self.registry.values():
            for j, k in enumerate(info.assignment):
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
                "cluster_tasks": self.cluster_tasks,
                "registry": [
                    [c, self.registry[c].sizes, self.registry[c].tasks, self.registry[c].assignment] for c in clients
                ],
            },
        )

    def load_state_dict(self, state: StrategyState) -> None:
        self.centroids = state.arrays["centroids"]
        self.cluster_tasks = list(state.meta["cluster_tasks"])
        self.bank = [state.adapters[f"cluster-{k}"] for k in range(len(self.centroids))]
        local, start = state.arrays["local_centroids"], 0
        self.registry = {}
        for client, sizes, tasks, assignment in state.meta["registry"]:
            n = len(sizes)
            self.registry[int(client)] = ClientClusters(
                centroids=local[start : start + n], sizes=sizes, tasks=tasks, assignment=assignment
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


def _route_key(key: str) -> tuple[str, str, str, int] | None:
    """``route.<mode>.<own|other>.<task>.<cluster>`` as (mode, whose, task, cluster); None if malformed."""
    parts = key.split(".")
    if len(parts) < 5 or parts[0] != "route" or parts[1] not in ROUTER_MODES or parts[2] not in ("own", "other"):
        return None
    if not parts[-1].isdigit():
        return None
    return parts[1], parts[2], ".".join(parts[3:-1]), int(parts[-1])
