"""The benchmark commands run and report their ratios (their targets live in docs, not here)."""

import json
from pathlib import Path


def test_bench_engine_quick_reports_the_three_ratios(cli, tmp_path: Path) -> None:
    result = cli("bench", "engine", "--quick", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    for key in ("mixed_over_single", "engine_over_peft", "pinned_kv_speedup"):
        assert report[key] > 0 and key in result.out
        assert key in report["targets"]
    assert len(report["timings_s"]["mixed"]) == report["config"]["repeats"]
    assert report["config"]["cls_virtual_tokens"] == 100 and report["machine"]["torch"]
