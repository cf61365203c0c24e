"""FedRouter's settings, message names and adapter names."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedrouter_app.federation.routing_fallback import FALLBACK_MODES
from fedrouter_app.registry import MethodConfig
from fedrouter_app.schema.checks import one_of, require
from fedrouter_app.schema.metadata import NEUTRAL
from fedrouter_app.schema.settings import RunConfig

REGISTER = "query.register"
# method.drift_check: the config flag of a registration query that asks an already registered client to check its
# data, and the metric of a client whose local clusters still fit them (it sends no centroids).
CHECK = "fedrouter.check"
UNCHANGED = "fedrouter.unchanged"
ROUTER_MODES = ("global", "local")
GLOBAL_FEATURES = ("centroids", "adapters", "both")
# method.embedding -> the pooling of fedrouter_app.ml.embedding.embed_texts.
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
            NEUTRAL: "centroids",
            "help": "What the server clusters local clusters by: 'centroids' (their data centroids, the authors' "
            "code), 'adapters' (the unit-normalised update of each local adapter after a first training from the "
            "initial adapter, in which every local cluster trains; the paper's wording) or 'both' (the unit-normalised "
            "centroid and update, concatenated). Routing always uses the data centroids.",
        },
    )
    embedding: str = field(
        default="mean",
        metadata={
            NEUTRAL: "mean",
            "help": "A sample's embedding (local clustering and routing): 'mean' over the instruction's tokens, "
            "'last_token' (the last token's state) or 'prefix' (mean over the instruction's leading task text only).",
        },
    )
    embedding_layer: int | None = field(
        default=None,
        metadata={
            NEUTRAL: None,
            "help": "Hidden state embedded: null, the last one (after the final norm); an integer indexes the "
            "model's hidden states (0: token embeddings, i: block i's output; negative counts from the end).",
        },
    )

    drift_check: bool = field(
        default=False,
        metadata={
            NEUTRAL: False,
            "help": "Data drift: before each training round (from round 2) registered clients check whether their "
            "training data still fit their local centroids; one whose mean sample-to-nearest-centroid distance "
            "exceeds drift_threshold x the value at its clustering clusters again and registers again (mapped to "
            "the nearest global clusters, which do not change).",
        },
    )
    drift_threshold: float = field(
        default=1.25,
        metadata={
            NEUTRAL: 1.25,
            "help": "drift_check: ratio of mean nearest-centroid distance to its value at clustering (> 0).",
        },
    )
    max_client_share: float = field(
        default=1.0,
        metadata={
            NEUTRAL: 1.0,
            "help": "Defence: a client's weight in a global cluster's mean is capped at this share of the cluster's "
            "total weight (e.g. 0.5), so inflated cluster sizes buy no more; 1.0: no cap.",
        },
    )
    centroid_outlier_threshold: float = field(
        default=0.0,
        metadata={
            NEUTRAL: 0.0,
            "help": "Defence: a registered centroid whose distance to the nearest global cluster mean (computed "
            "without it) exceeds this x the median such distance of the registration is refused: its client trains "
            "nothing for that local cluster. 0: off. Needs clustering=kmeans, global_features=centroids.",
        },
    )
    router_fallback: str = field(
        default="soft",
        metadata={
            NEUTRAL: "none",
            "help": "This project's extension (label-free): a test sample whose nearest global centroid is further "
            "than the client's calibrated threshold falls back from one routed adapter to a mixture of all of them: "
            "'soft' (per-row softmax(-distance / tau) weights), 'average' (1/K each, the mean of the LoRA deltas). "
            "Reported as the extra view router-fallback beside the plain ones; 'none': the paper's hard routing only.",
        },
    )
    fallback_quantile: float = field(
        default=0.95,
        metadata={
            NEUTRAL: 0.95,
            "help": "router_fallback: the threshold is this quantile, in (0, 1], of the distances from the client's "
            "own training samples to their nearest global centroid (0.95: about 5% of in-distribution samples "
            "would fall back; 1: the farthest training sample).",
        },
    )
    fallback_margin: float = field(
        default=1.0,
        metadata={
            NEUTRAL: 1.0,
            "help": "router_fallback: a sample falls back beyond this x the calibrated threshold (> 0).",
        },
    )
    fallback_temperature: float = field(
        default=1.0,
        metadata={
            NEUTRAL: 1.0,
            "help": "router_fallback=soft: tau of the softmax weights is this x the calibrated threshold (> 0); "
            "larger mixes more evenly.",
        },
    )
    local_router_view: bool = field(
        default=True,
        metadata={
            NEUTRAL: True,
            "help": "Also score the 'local' router (each sample to the nearest of the client's own clusters) as the "
            "view router-local; false skips that scoring where method.router is not 'local'.",
        },
    )
    diagnose_routing: str = field(
        default="held_out",
        metadata={
            NEUTRAL: "off",
            "help": "Why routing fails, measured (diagnosis samples cost about K+2 times more to evaluate): clients "
            "score each diagnosed test sample under every global adapter, their average and the base model, and "
            "report per task diag.<task>.* means (each cluster, average, base, routed and the per-sample best, "
            "oracle). 'off', 'held_out' (samples of scenario.unseen_tasks only) or 'all'.",
        },
    )

    def registers_clusters(self) -> bool:
        return True

    def min_distinct_samples(self) -> tuple[int, str]:
        # k-means cannot split fewer distinct samples into n_local clusters.
        return self.n_local, f"method.n_local={self.n_local} clusters"

    def shared_centroid_noise(self) -> float:
        return self.centroid_noise

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
