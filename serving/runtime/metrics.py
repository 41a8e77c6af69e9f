"""Prometheus metrics of one serving replica, in a registry of its own."""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from promptmux.registry import RolloutSpec
from promptmux.serving.engine.client import CacheStats

ROUTE = ["task", "version", "variant"]


class PromptCacheCollector(Collector):
    """Reads the prompt cache's counters at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:  # prometheus_client's collector protocol
        stats = self.stats()
        for name, value in (("hits", stats.hits), ("misses", stats.misses), ("evictions", stats.evictions)):
            yield CounterMetricFamily(f"promptmux_prompt_cache_{name}", f"prompt cache {name}", value=value)


class RolloutCollector(Collector):
    """Each rollout variant's share of its task's traffic, as this replica routes it now."""

    def __init__(self, rollouts: Callable[[], dict[str, RolloutSpec]]) -> None:
        self.rollouts = rollouts

    def collect(self) -> Iterator[GaugeMetricFamily]:  # prometheus_client's collector protocol
        family = GaugeMetricFamily("promptmux_rollout_share", "a rollout variant's share of its task's traffic "
                                   "(an automatic rollout's current step)", labels=["task", "variant", "version"])
        for task, rollout in sorted(self.rollouts().items()):
            total = sum(variant.weight for variant in rollout.variants)
            for variant in rollout.variants:
                family.add_metric([task, variant.name, str(variant.version)], variant.weight / total)
        yield family


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("promptmux_requests", "requests by route and outcome",
                                ["endpoint", *ROUTE, "status"], registry=self.registry)
        self.errors = Counter("promptmux_errors", "requests refused or failed, by HTTP status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("promptmux_request_latency_seconds", "time to the full answer",
                                 ["endpoint", *ROUTE], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("promptmux_tokens", "prompt and completion tokens", [*ROUTE, "kind"],
                              registry=self.registry)
        self.batch_size = Histogram("promptmux_batch_rows", "rows in each decode step", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.rejected_versions = Counter("promptmux_rejected_versions", "versions refused as corrupt or incompatible",
                                         ["task", "version"], registry=self.registry)
        self.broken_aliases = Gauge("promptmux_broken_alias", "1 while an alias points at a version that fails "
                                    "validation", ["task", "alias"], registry=self.registry)
        self.broken_variants = Gauge("promptmux_broken_rollout_variant", "1 while a rollout variant's version fails "
                                     "validation (its share is served as `<variant>-fallback`)", ["task", "variant"],
                                     registry=self.registry)
        self.unreadable_tasks = Gauge("promptmux_unreadable_task", "1 while a task's registry files cannot be read "
                                      "(it keeps its last good routes)", ["task"], registry=self.registry)
        self.feedback = Counter("promptmux_feedback", "feedback counted, by the route that served the request",
                                [*ROUTE], registry=self.registry)
        self.feedback_score = Counter("promptmux_feedback_score", "sum of the scores of that feedback (÷ the count: "
                                      "the mean score, or accuracy for classifications)", [*ROUTE], registry=self.registry)
        self.tenant_requests = Counter("promptmux_tenant_requests", "requests by tenant and outcome (the admin key's "
                                       "as tenant \"\")", ["tenant", "status"], registry=self.registry)
        self.tenant_tokens = Counter("promptmux_tenant_tokens", "generated tokens by tenant", ["tenant"],
                                     registry=self.registry)
        self.tenant_queue_wait = Histogram("promptmux_tenant_queue_wait_seconds", "time waiting for a decode slot, "
                                           "by tenant", ["tenant"], registry=self.registry,
                                           buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tenant_rate_limited = Counter("promptmux_tenant_rate_limited", "requests refused with 429, by tenant and "
                                           "the limit met", ["tenant", "limit"], registry=self.registry)
        self.cache_bytes = Gauge("promptmux_prompt_cache_bytes", "bytes of prompts and their KV on the device",
                                 registry=self.registry)

    def watch_prompt_cache(self, stats: Callable[[], CacheStats]) -> None:
        self.cache_bytes.set_function(lambda: stats().bytes)
        self.registry.register(PromptCacheCollector(stats))

    def watch_rollouts(self, rollouts: Callable[[], dict[str, RolloutSpec]]) -> None:
        self.registry.register(RolloutCollector(rollouts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
