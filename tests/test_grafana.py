"""`deploy/grafana/promptmux.json` graphs what a replica exports: every metric a panel queries
is one the server's `/metrics` has (with its counter or histogram suffix), and every label a
panel groups by is one of that metric's labels."""

import json
import re
from pathlib import Path

from helpers import build_registry
from prometheus_client.metrics_core import Metric

from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "promptmux.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "unknown": ("",)}


def exported(families: list[Metric], labels: dict[str, set[str]]) -> dict[str, set[str]]:
    """Every series name the families expose, with the labels it carries."""
    names = {}
    for family in families:
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels.get(family.name, set()) | ({"le"} if suffix == "_bucket" else set())
    return names


def test_every_panel_queries_metrics_and_labels_the_server_exports(tmp_path: Path) -> None:
    service = PromptmuxService(ServeSettings(registry=build_registry(tmp_path / "registry").uri))
    try:
        metrics = service.metrics
        labels = {metric._name: set(metric._labelnames) for metric in vars(metrics).values()
                  if hasattr(metric, "_labelnames")} | {"promptmux_rollout_share": {"task", "variant", "version"}}
        series = exported(list(metrics.registry.collect()), labels)
    finally:
        service.shutdown()
    dashboard = json.loads(DASHBOARD.read_text())
    queried = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in re.findall(r"promptmux_[a-z_]+", expr):
                assert name in series, f"{panel['title']}: {name} is not exported ({sorted(series)})"
                queried += 1
            for group in re.findall(r"by \(([^)]*)\)", expr):
                for label in (part.strip() for part in group.split(",")):
                    metric = re.findall(r"promptmux_[a-z_]+", expr)[0]
                    assert label in series[metric], f"{panel['title']}: {metric} has no label {label!r}"
    assert queried >= 14 and {"promptmux_tenant_rate_limited_total", "promptmux_request_latency_seconds_bucket"} <= {
        name for panel in dashboard["panels"] for t in panel["targets"] for name in re.findall(r"promptmux_[a-z_]+", t["expr"])}
