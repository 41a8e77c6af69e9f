"""The benchmark commands run and report their ratios (their targets live in docs, not here).

Each runs through the real command at its smallest workload (the `--quick` sizes shrunk
further here: the figures are meaningless, the code paths are the ones measured) and is
held to one property of what it compares, besides its ratios being there."""

import json
import math
from pathlib import Path

import pytest

from promptmux.serving.bench import engine, fairness, http, registry, scheduler, streaming


def check_ratios(report: dict, output: str, names: set[str]) -> None:
    """Every named ratio has a target, a finite positive value, and a row in the printed table."""
    assert set(report["targets"]) == names
    for name in names:
        assert math.isfinite(report[name]) and report[name] > 0 and name in output, name
    assert report["machine"]["load_average_before"] is not None and report["config"]["mode"] == "quick"


def smallest(monkeypatch: pytest.MonkeyPatch, bench, **sizes: object) -> None:
    monkeypatch.setitem(bench.SIZES, "quick", {**bench.SIZES["quick"], **sizes})


def test_bench_engine_reports_its_ratios_and_its_kv_paths_agree(cli, tmp_path: Path, monkeypatch) -> None:
    smallest(monkeypatch, engine, tasks=4, batch=4, new_tokens=2, input_tokens=4, virtual_tokens=4, cls_virtual_tokens=16,
             cls_input_tokens=4, repeats=1, decode_tokens=6, decode_input_tokens=40)
    monkeypatch.setattr(engine, "ADAPT_S", 0.2)
    result = cli("bench", "engine", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"engine_over_hf", "engine_over_hf_batch1", "step_over_bound", "kv_bytes_per_token",
                                      "mixed_over_single", "mixed_methods_over_single", "engine_over_peft",
                                      "pinned_kv_speedup", "busy_over_quiet"})
    assert report["pinned_kv_labels_equal_recompute"] is True
    decode = report["decode"]  # the engine and bare HF made the same tokens; the pool gave everything back
    assert decode["same_tokens_as_hf"] is True and decode["kv"]["pool"]["empty_after"] is True
    assert report["kv_bytes_per_token"] < decode["kv"]["dynamic_cache_bytes_per_token"]
    assert decode["profile"]["engine"][0]["op"] and "peak flops" in result.out
    assert len(report["timings_s"]["mixed"]) == len(report["timings_s"]["mixed_beside_busy"]) == report["config"]["repeats"]
    assert report["config"]["cls_virtual_tokens"] == 16 and report["machine"]["torch"]


def test_bench_scheduler_gives_both_modes_the_same_tokens(cli, tmp_path: Path, monkeypatch) -> None:
    smallest(monkeypatch, scheduler, requests=12, tasks=2, max_batch_size=4, rate_per_s=200.0, new_tokens=[2, 12], repeats=1)
    result = cli("bench", "scheduler", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"continuous_over_static"})
    for mode in ("continuous", "static"):
        assert report[mode]["tokens"] == report["continuous"]["tokens"] > 0
        assert report[mode]["latency_p99_s"] >= report[mode]["latency_p50_s"] > 0
        assert report[mode]["ttft_p50_s"] > 0


def test_bench_http_serves_the_tokens_the_engine_makes(cli, tmp_path: Path, monkeypatch) -> None:
    smallest(monkeypatch, http, requests=8, tasks=2, concurrency=4, max_batch_size=4, new_tokens=[2, 8])
    result = cli("bench", "http", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"http_over_engine"})
    assert report["http"]["tokens"] == report["engine"]["tokens"] > 0
    assert report["http"]["latency_p99_s"] >= report["http"]["latency_p50_s"] > 0


def test_bench_streaming_detokenizes_incrementally(cli, tmp_path: Path, monkeypatch) -> None:
    smallest(monkeypatch, streaming, new_tokens=400, repeats=1)
    result = cli("bench", "streaming", "--quick", "--base-model", "tiny-random-llama", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"stream_over_plain"})
    assert "≤ 1.5" in result.out and report["config"]["new_tokens"] == 400
    assert report["full_over_incremental"] > 1  # decoding everything again at every token costs more


def test_bench_fairness_refuses_the_flood_not_the_trickle(cli, tmp_path: Path, monkeypatch) -> None:
    smallest(monkeypatch, fairness, new_tokens=[2, 6], max_batch_size=4, b_requests=6, calibration=16)
    result = cli("bench", "fairness", "--quick", "--base-model", "tiny-random-llama", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"fair_p99_over_alone"})
    assert report["fifo_p99_over_alone"] > 0 and "A floods, fair" in result.out
    for case in ("alone", "fifo", "fair"):
        assert report[case]["b_served"] == 6 and report[case]["b_429"] == 0  # the trickle is never refused
    for case in ("fifo", "fair"):
        assert report[case]["a_429"] > 0 and report[case]["a_served"] > 0  # the flood is, past its concurrency


def test_bench_registry_counts_the_storage_requests_of_a_refresh_locally_and_on_s3(cli, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    monkeypatch.setattr(registry, "ROUTES", 2000)
    monkeypatch.setattr(registry, "REFRESH_S", 0.5)  # the replicas' refresh the alias move waits for
    result = cli("bench", "registry", "--quick", "--tasks", "20", "--storage", "local,s3", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"full_over_unchanged", "route_p99_ratio", "hit_3000_over_10", "random_16_over_fixed_16"})
    for storage in ("local", "s3"):
        figures = report["storage"][storage]["20"]
        assert figures["refresh_unchanged"]["requests"] == 1
        assert 11 < figures["refresh_10_changes"]["requests"] < figures["refresh_full"]["requests"]
        assert figures["registrations_per_s"] > 0 and figures["alias_move_s"] < 5
    assert report["prompts"]["resident"] == 20 and report["prompts"]["cold_loads_during_batch"] > 0
