"""`make demo` runs `promptmux demo`: train, register, roll out, serve, send traffic, shut down."""

import re


def test_demo_runs_end_to_end(cli, tmp_path) -> None:
    result = cli("demo", "--registry", str(tmp_path / "registry"))
    assert result.code == 0, result.err
    for task in ("review-satisfaction", "ticket-priority", "act-as"):
        assert f"registered {task} version 1" in result.out
    assert "rollout v1 50% / v2 50%" in result.out
    assert "32 mixed-task requests" in result.out
    counters = re.findall(r'promptmux_requests_total\{.*task="review-satisfaction",variant="(v\d)".*\} (\d+)', result.out)
    assert {variant for variant, _ in counters} == {"v1", "v2"}
    assert sum(int(float(n)) for _, n in counters) == 12
    assert "server stopped (exit code 0)" in result.out
