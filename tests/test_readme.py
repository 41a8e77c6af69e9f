"""The README's shell blocks, run in order as a newcomer would run them after `make test`.

Every ```bash block runs, in one shell, in a fresh folder that sees the repository's
`tasks/examples` (through a `tasks` link, which also checks that a folder of that name
does not shadow the code). Two kinds of block are left out, and say so: the set-up block
(`make test` runs this test) and blocks whose first line is `# slow: ...` (real-model
training, which `train_examples.sh` and `make demo` run). The port is moved to a free one.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[str]:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    return [block for block in blocks if "make test" not in block and not block.startswith("# slow:")]


def test_the_readme_shell_blocks_run_in_order(tmp_path: Path) -> None:
    blocks = runnable_blocks()
    assert len(blocks) >= 6
    (tmp_path / "tasks").symlink_to(ROOT / "tasks")
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("8000", str(free_port()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("PROMPTMUX_REGISTRY", None)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
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
