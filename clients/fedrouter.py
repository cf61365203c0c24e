"""FedRouter client: local clustering, one adapter per local cluster, routed evaluation."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from clients.base import ClientMethod
from fedrouter_app.centroid_privacy import cluster_means, merge_small_clusters, noisy_centroids
from fedrouter_app.client_env import RoundInfo
from fedrouter_app.clustering import contingency, kmeans, nearest, scores_from_counts
from fedrouter_app.embedding import embed_texts
from fedrouter_app.evaluation import ExampleScore
from fedrouter_app.records import CONFIG, METRICS, matrix_record, read_matrix
from fedrouter_app.registry import register_client
from fedrouter_app.seeding import derive_seed, numpy_rng
from fedrouter_app.training import TrainStats
from strategies.fedrouter import CENTROIDS, ROUTER_MODES, global_adapter_name, local_adapter_name

CLUSTERS = "fedrouter.clusters"
TEST_EMBEDDINGS = "fedrouter.test-embeddings"


@dataclass
class LocalClusters:
    """A client's clustering of its training samples (kept in ``context.state``)."""

    centroids: np.ndarray
    labels: np.ndarray

    def to_record(self) -> ArrayRecord:
        return ArrayRecord(
            {"centroids": Array(self.centroids.astype(np.float32)), "labels": Array(self.labels.astype(np.int64))}
        )

    @classmethod
    def from_record(cls, record: ArrayRecord) -> LocalClusters:
        return cls(centroids=record["centroids"].numpy(), labels=record["labels"].numpy())


@register_client("fedrouter")
class FedRouterClient(ClientMethod):
    """Registers its local centroids, trains the adapters of its clusters, routes its test samples."""

    actions = ("query.register",)

    # Registration.

    def query_register(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        clusters = self.local_clusters()
        metrics: dict[str, float] = {"num-clusters": len(clusters.centroids)}
        for j in range(len(clusters.centroids)):
            metrics[f"cluster.{j}.size"] = int((clusters.labels == j).sum())
        if self.env.cfg.method.report_task_stats:
            table = contingency([ex.task for ex in self.env.data.train], clusters.labels)
            for j, counts in table.items():
                metrics.update({f"cluster.{j}.task.{task}": n for task, n in counts.items()})
            scores = scores_from_counts(table)
            metrics.update({"local-ari": scores["ari"], "local-purity": scores["purity"]})
        return RecordDict({CENTROIDS: matrix_record(CENTROIDS, clusters.centroids), METRICS: MetricRecord(metrics)})

    def local_clusters(self) -> LocalClusters:
        """This client's clusters: from its state, or computed once and stored there."""
        if CLUSTERS in self.env.state.array_records:
            return LocalClusters.from_record(self.env.state.array_records[CLUSTERS])
        train = self.env.data.train
        method = self.env.cfg.method
        embeddings = embed_texts(
            self.env.model(),
            [ex.instruction for ex in train],
            batch_size=method.embed_batch_size,
            by_length=self.env.cfg.speed.eval_batching,
        )
        if method.clustering == "oracle":
            labels = np.array([self.env.data.tasks.index(ex.task) for ex in train], dtype=np.int64)
            centroids = np.stack([embeddings[labels == j].mean(axis=0) for j in range(len(self.env.data.tasks))])
        else:
            if len(train) < method.n_local:
                raise ValueError(
                    f"client {self.env.client_id} has {len(train)} training samples, "
                    f"fewer than method.n_local={method.n_local}"
                )
            centroids, labels = kmeans(
                embeddings, method.n_local, derive_seed(self.env.cfg.seed, "local-kmeans", self.env.client_id)
            )
        centroids, labels = self.shared_centroids(embeddings, centroids, labels)
        clusters = LocalClusters(centroids=centroids.astype(np.float32), labels=labels)
        self.env.state[CLUSTERS] = clusters.to_record()
        return clusters

    def shared_centroids(
        self, embeddings: np.ndarray, centroids: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply the privacy settings: merge clusters below ``min_cluster_size``, add centroid noise.

        With the defaults (size 1, no noise) the clustering is returned unchanged.
        """
        method = self.env.cfg.method
        merged = merge_small_clusters(embeddings, labels, method.min_cluster_size)
        if not np.array_equal(merged, labels):
            labels, centroids = merged, cluster_means(embeddings, merged)
        if method.centroid_noise > 0:
            rng = numpy_rng(self.env.cfg.seed, "centroid-noise", self.env.client_id)
            centroids = noisy_centroids(embeddings, labels, method.centroid_clip, method.centroid_noise, rng)
        return centroids, labels

    # Training.

    def train(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        # Normally computed at registration; a restarted SuperNode has lost its state and recomputes
        # the same clusters (the clustering is seeded by run seed and client).
        clusters = self.local_clusters()
        config = content.config_records[CONFIG]
        assignment, local = list(config["fedrouter.map"]), list(config["fedrouter.train"])
        adapters, parts, extra = {}, [], {}
        for j in local:
            start = self.env.read_adapter(content, global_adapter_name(assignment[j]))
            examples = [ex for ex, label in zip(self.env.data.train, clusters.labels, strict=True) if label == j]
            adapter, stats = self.env.train(start, info, examples=examples, stream=j)
            adapters[local_adapter_name(j)] = adapter
            parts.append(stats)
            extra[f"cluster.{j}.loss"] = stats.mean_loss if stats.steps else 0.0
        return self.env.train_reply(TrainStats.merge(parts), adapters, extra)

    # Evaluation.

    def evaluate(self, content: RecordDict, info: RoundInfo) -> RecordDict:
        config = content.config_records[CONFIG]
        assignment, primary = list(config["fedrouter.map"]), str(config["fedrouter.router"])
        n_clusters = sum(1 for name in content.array_records if name.startswith("global."))
        centroids = read_matrix(
            content.array_records[CENTROIDS], CENTROIDS, max_rows=max(n_clusters, 1), cols=self.env.model().hidden_size
        )
        embeddings = self.test_embeddings()
        routes = {
            "global": nearest(embeddings, centroids),
            "local": nearest(embeddings, centroids, candidates=assignment),
        }
        test = self.env.data.test
        # Every (sample, cluster) pair either router asks for, scored once, all in one set of batches.
        pairs = sorted({(i, int(k)) for route in routes.values() for i, k in enumerate(route)})
        adapters = {k: self.env.read_adapter(content, global_adapter_name(k)) for k in sorted({k for _, k in pairs})}
        rows = self.env.score_routed([test[i] for i, _ in pairs], [k for _, k in pairs], adapters)
        scored: dict[tuple[int, int], ExampleScore] = dict(zip(pairs, rows, strict=True))
        views = {f"router-{mode}": [scored[(i, int(k))] for i, k in enumerate(routes[mode])] for mode in ROUTER_MODES}
        counts: dict[str, float] = defaultdict(float)
        for mode, route in routes.items():
            for ex, k in zip(test, route, strict=True):
                whose = "own" if ex.task in self.env.data.tasks else "other"
                counts[f"route.{mode}.{whose}.{ex.task}.{int(k)}"] += 1
        return self.env.evaluate_reply(views[f"router-{primary}"], views=views, extra=counts)

    def test_embeddings(self) -> np.ndarray:
        """Embeddings of this client's test instructions (computed once, kept in state)."""
        if TEST_EMBEDDINGS in self.env.state.array_records:
            return self.env.state.array_records[TEST_EMBEDDINGS]["embeddings"].numpy()
        embeddings = embed_texts(
            self.env.model(),
            [ex.instruction for ex in self.env.data.test],
            batch_size=self.env.cfg.method.embed_batch_size,
            by_length=self.env.cfg.speed.eval_batching,
        )
        self.env.state[TEST_EMBEDDINGS] = ArrayRecord({"embeddings": Array(embeddings)})
        return embeddings
