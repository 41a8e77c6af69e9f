"""`make demo` runs `promptmux demo`: train, compare, register, roll out, serve, send traffic, shut down.

`make demo` itself runs on the real model (a few minutes); the suite runs the same code on
the random embedded model.
"""

import re

from helpers import SHARED_DATA


def test_demo_runs_end_to_end(cli, tmp_path) -> None:
    result = cli("demo", "--registry", str(tmp_path / "registry"), "--base-model", "tiny-random-llama",
                 "--seed-data", str(SHARED_DATA), "--train-size", "48", "--feedback-passes", "1")
    assert result.code == 0, result.err
    assert "dog-grooming: 48 training examples from" in result.out
    for task, versions in (("dog-grooming", (1, 2)), ("act-as", (1,))):
        for version in versions:
            assert f"registered {task} version {version}" in result.out
    for shown in ("untuned base model", "Granite-13B + tuned prompt (seed)", "before tuning", "after tuning"):
        assert shown in result.out
    assert re.search(r"automatic rollout, control v[12] \(the weaker\) 50% / candidate v[12] 50%", result.out)
    assert "24 mixed-task requests" in result.out
    counters = re.findall(r'promptmux_requests_total\{.*task="dog-grooming",variant="(\w+)".*\} (\d+)', result.out)
    assert {variant for variant, _ in counters} == {"control", "candidate"}
    assert sum(int(float(n)) for _, n in counters) == 12
    assert "closing the loop" in result.out and "history of dog-grooming" in result.out
    sent = re.search(r"after (\d+) reviews with feedback the rollout has (ended|still running); production is v([12])",
                     result.out)
    assert sent and int(sent.group(1)) >= 16
    if sent.group(2) == "ended":  # the random model's versions may or may not differ enough to decide
        assert re.search(r"after \d+ reviews: (promote|rollback)", result.out)
    assert "server stopped (exit code 0)" in result.out
