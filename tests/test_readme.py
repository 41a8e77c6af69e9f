"""The README's shell blocks, run in order as a newcomer would run them after `make test`.

Every ```bash block runs, in four parts (each its own test and shell, in one fresh folder
that sees the repository's `tasks/examples` through a `tasks` link, which also checks that
a folder of that name does not shadow the code). Two kinds of block are left out, and say so: the set-up block
(`make test` runs this test) and blocks whose first line is `# slow: ...` (real-model
training, which `train_examples.sh` and `make demo` run). The port is moved to a free one.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[str]:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    return [block for block in blocks if "make test" not in block and not block.startswith("# slow:")]


def chapters() -> list[list[str]]:
    """The tour in the parts a newcomer could pause between (each under a minute): training and
    registering; the registry's commands and offline inference; a server, its clients, rollouts,
    tenants and the console; and the search. Shell state never crosses a part: the one
    variable every part shares is the registry, `PROMPTMUX_REGISTRY`, which the tour exports first."""
    blocks = runnable_blocks()
    starts = [0, 1, next(i for i, b in enumerate(blocks) if b.startswith("promptmux serve")),
              next(i for i, b in enumerate(blocks) if b.startswith("promptmux tune"))]
    return [blocks[a:b] for a, b in zip(starts, starts[1:] + [len(blocks)])]


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The folder the tour runs in, its environment, and every part's output so far."""
    folder = tmp_path_factory.mktemp("tour")
    (folder / "tasks").symlink_to(ROOT / "tasks")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "disabled", "PROMPTMUX_REGISTRY": str(folder / "my-registry")}
    return {"folder": folder, "env": env, "port": str(free_port()), "output": []}


def run_part(tour: dict, blocks: list[str]) -> str:
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("8000", tour["port"])
    result = subprocess.run(["bash", "-c", script], cwd=tour["folder"], env=tour["env"], capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    tour["output"].append(output)
    assert result.returncode == 0, output[-6000:]
    return output


def test_the_tour_is_four_parts_of_every_runnable_block() -> None:
    parts = chapters()
    assert len(parts) == 4 and all(parts) and sum(parts, []) == runnable_blocks()
    assert parts[0][0].startswith("export PROMPTMUX_REGISTRY=$PWD/my-registry")


def test_the_tour_trains_and_registers(tour: dict) -> None:
    assert "registered grooming version 1" in run_part(tour, chapters()[0])


def test_the_tour_lists_moves_exports_and_runs_offline(tour: dict) -> None:
    assert "wrote 4 results to results.jsonl (0 failed)" in run_part(tour, chapters()[1])


def test_the_tour_serves_rolls_out_and_shares_the_endpoint(tour: dict) -> None:
    assert "draining" in run_part(tour, chapters()[2])


def test_the_tour_searches_and_every_part_said_what_the_readme_says(tour: dict) -> None:
    run_part(tour, chapters()[3])
    tmp_path, output = tour["folder"], "".join(tour["output"])
    for expected in ("registered grooming version 1", "registered act-as version 2", "registered act-as-copy version 1",
                     "registered grooming-copy version 1 (classification task, prompt tuning)", "wrote 4 results to results.jsonl (0 failed)",
                     '"status":"ok"', "data: [DONE]", '"label"', "text_completion", "promptmux_requests_total",
                     "'task': 'act-as'", "draining", "registered act-as-chat version 1", '"object":"chat.completion"',
                     "chat.completion length", "\nTrue\n", "added tenant team-a", "unknown task 'grooming'",
                     "no key: 401", "revoked: 401", "revoked tenant team-a", "console for", "['grooming']", "2 trials, chosen"):
        assert expected in output, (expected, output[-6000:])
    registry = tmp_path / "my-registry" / "tasks"
    template = json.loads((registry / "grooming" / "task.json").read_text())["spec"]["template"]
    assert template == "Review: {input}\nWas the customer satisfied? Answer:"  # a newline, not a backslash and an n
    copy = json.loads((registry / "grooming-copy" / "task.json").read_text())["spec"]
    original = json.loads((registry / "grooming" / "task.json").read_text())["spec"]
    assert {**original, "name": "grooming-copy", "template": "Comment: {input}\nHappy?"} == copy  # the export's spec
    assert "refused" in output and "deleted task act-as-copy" in output
    assert [path.name for path in (registry / "act-as-copy").iterdir()] == ["history"]  # kept: it records the delete
    variants = set(re.findall(r"'variant': '(v[12])'", output))
    assert variants == {"v1", "v2"}, output[-3000:]  # six routing keys over a 50/50 rollout reach both versions
