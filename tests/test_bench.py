"""The benchmark commands run and report their ratios (their targets live in docs, not here)."""

import json
import math
from pathlib import Path


def check_ratios(report: dict, output: str, names: set[str]) -> None:
    """Every named ratio has a target, a finite positive value, and a row in the printed table."""
    assert set(report["targets"]) == names
    for name in names:
        assert math.isfinite(report[name]) and report[name] > 0 and name in output, name
    assert report["machine"]["load_average_before"] is not None and report["config"]["mode"] == "quick"


def test_bench_engine_quick_reports_its_ratios(cli, tmp_path: Path) -> None:
    result = cli("bench", "engine", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"mixed_over_single", "mixed_methods_over_single", "engine_over_peft",
                                      "pinned_kv_speedup", "busy_over_quiet"})
    assert len(report["timings_s"]["mixed"]) == len(report["timings_s"]["mixed_beside_busy"]) == report["config"]["repeats"]
    assert report["config"]["cls_virtual_tokens"] == 100 and report["machine"]["torch"]


def test_bench_scheduler_quick_reports_both_modes(cli, tmp_path: Path) -> None:
    result = cli("bench", "scheduler", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"continuous_over_static"})
    for mode in ("continuous", "static"):
        assert report[mode]["tokens"] == report["continuous"]["tokens"] > 0
        assert report[mode]["latency_p99_s"] >= report[mode]["latency_p50_s"] > 0
        assert report[mode]["ttft_p50_s"] > 0


def test_bench_http_quick_compares_http_with_the_engine(cli, tmp_path: Path) -> None:
    result = cli("bench", "http", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"http_over_engine"})
    assert report["http"]["tokens"] == report["engine"]["tokens"] > 0
    assert report["http"]["latency_p99_s"] >= report["http"]["latency_p50_s"] > 0


def test_bench_streaming_compares_a_long_stream_with_the_plain_request(cli, tmp_path: Path) -> None:
    result = cli("bench", "streaming", "--quick", "--base-model", "tiny-random-llama", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"stream_over_plain"})
    assert "≤ 1.5" in result.out and report["config"]["new_tokens"] == 2000
    assert report["full_over_incremental"] > 1  # decoding everything again at every token costs more


def test_bench_registry_counts_the_storage_requests_of_a_refresh_locally_and_on_s3(cli, tmp_path: Path) -> None:
    result = cli("bench", "registry", "--quick", "--tasks", "40", "--storage", "local,s3", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    check_ratios(report, result.out, {"full_over_unchanged", "route_p99_ratio", "hit_3000_over_10", "random_16_over_fixed_16"})
    for storage in ("local", "s3"):
        figures = report["storage"][storage]["40"]
        assert figures["refresh_unchanged"]["requests"] == 1
        assert 11 < figures["refresh_10_changes"]["requests"] < figures["refresh_full"]["requests"]
        assert figures["registrations_per_s"] > 0 and figures["alias_move_s"] < 5
    assert report["prompts"]["resident"] == 40 and report["prompts"]["cold_loads_during_batch"] > 0
