"""`make demo` runs `promptmux demo`: train, compare, register, roll out, serve, send traffic, shut down.

`make demo` itself runs on the real model (a few minutes); the suite runs the same code on
the random embedded model.
"""

import re

from conftest import SHARED_DATA


def test_demo_runs_end_to_end(cli, tmp_path) -> None:
    result = cli("demo", "--registry", str(tmp_path / "registry"), "--base-model", "tiny-random-llama",
                 "--seed-data", str(SHARED_DATA), "--train-size", "48")
    assert result.code == 0, result.err
    assert "dog-grooming: 48 training examples from" in result.out
    for task, versions in (("dog-grooming", (1, 2)), ("act-as", (1,))):
        for version in versions:
            assert f"registered {task} version {version}" in result.out
    for shown in ("untuned base model", "Granite-13B + tuned prompt (seed)", "before tuning", "after tuning"):
        assert shown in result.out
    assert "rollout v1 50% / v2 50%" in result.out
    assert "24 mixed-task requests" in result.out
    counters = re.findall(r'promptmux_requests_total\{.*task="dog-grooming",variant="(v\d)".*\} (\d+)', result.out)
    assert {variant for variant, _ in counters} == {"v1", "v2"}
    assert sum(int(float(n)) for _, n in counters) == 12
    assert "server stopped (exit code 0)" in result.out
