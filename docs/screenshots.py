"""The README's screenshots of the console: its three main pages over a registry, taken in
headless Chromium (Debian's `chromium`).

    python docs/screenshots.py REGISTRY TASK [OUT_DIR]

The figures in docs/img/ were taken over the registry `make demo` fills (`promptmux demo
--registry DIR`): SmolLM2-135M's tuned dog-grooming prompt, its learning curve, and the
automatic rollout the demo runs to its decision.
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright


def main(registry: str, task: str, out: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    promptmux = Path(sys.executable).parent / "promptmux"
    server = subprocess.Popen([str(promptmux), "ui", "--registry", registry, "--port", str(port)])
    origin = f"http://127.0.0.1:{port}/ui"
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            for _ in range(100):
                try:
                    page.goto(f"{origin}/")
                    break
                except Exception:  # not listening yet
                    time.sleep(0.1)
            for name, path in (("tasks", "/"), ("task", f"/tasks/{task}"), ("experiment", f"/tasks/{task}/experiment")):
                page.goto(f"{origin}{path}")
                page.wait_for_timeout(400)  # the charts draw after the page loads
                page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)
                print(f"wrote {out / f'console-{name}.png'}")
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3] if len(sys.argv) > 3 else "docs/img"))
