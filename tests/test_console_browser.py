"""The console in a real browser: headless Chromium (Debian's `chromium`, driven by
playwright through `executable_path`; no browser is ever downloaded) against the serving
app of a live replica (real HTTP on a loopback port) with its rollout controller running.

An admin logs in and opens a running automatic rollout; feedback sent through the API makes
the counts rise on the open page, without a reload, until the controller decides and the
decision appears; a click on "roll back" (and its confirmation) moves `production` back,
and the history shows who did it. A tenant's session sees only its own task. No page
requests anything from another host, and the browser's console logs no error.

Set PROMPTMUX_SCREENSHOTS to a folder to save the three main pages there (docs/img/ holds
the README's, taken over the demo's registry by `docs/screenshots.py`).
"""

import os
import shutil
from pathlib import Path

import httpx
import pytest
from helpers import BASE, build_registry, serve_locally, wait_until

from promptmux.registry.policy import RolloutPolicy, SequentialTest
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.rollouts.controller import RolloutController
from promptmux.serving.runtime.settings import ServeSettings

CHROMIUM = os.environ.get("PROMPTMUX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium); the "
                                "console's browser tests need it")
ADMIN_KEY = "browser-admin-key"


class Watched:
    """A page whose requests and console errors are recorded."""

    def __init__(self, page, origin: str) -> None:
        self.page, self.origin = page, origin
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((origin, "data:")) else self.elsewhere.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def login(self, key: str, name: str = "") -> None:
        self.page.goto(f"{self.origin}/ui/")
        self.page.get_by_label("API key").fill(key)
        if name:
            self.page.get_by_label("Your name", exact=False).fill(name)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(f"{self.origin}/ui/")

    def outcomes(self, side: str):
        return self.page.locator(f'[data-bind="figures.{side}.outcomes"]')


def classify_and_judge(url: str, count: int) -> dict[str, int]:
    """`count` classifications of grooming through the API, each judged: the candidate's answer
    right, the control's wrong. Outcomes sent, by side (on a slow machine the controller may
    decide before the last: those are served by the alias, outside the experiment)."""
    sent = {"control": 0, "candidate": 0}
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for i in range(count):
            answer = client.post("/v1/classify", json={"task": "grooming", "input": f"review {i}"}).json()["outputs"][0]
            label = answer["label"] if answer["variant"] == "candidate" else ("1" if answer["label"] == "0" else "0")
            assert client.post("/v1/feedback", json={"id": answer["id"], "label": label}).status_code == 200
            sent[answer["variant"]] = sent.get(answer["variant"], 0) + 1
    return sent


def shoot(page, name: str) -> None:
    folder = os.environ.get("PROMPTMUX_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"console-{name}.png"), full_page=True)


def test_a_live_rollout_in_the_browser(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("grooming", "production", 1)
    _, tenant_key = registry.tenants.add("alpha", ["act-as"])
    registry.rollouts.start("grooming", RolloutPolicy(control=1, candidate=2, steps=[50], min_samples_per_step=10**6,
                                                      test=SequentialTest(min_samples=8)))
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE), api_token=ADMIN_KEY,
                             refresh_interval_s=0.5, traffic_interval_s=1.0)
    controller = RolloutController(registry, interval_s=0.5)
    with serve_locally(settings) as (url, _service), playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        admin = Watched(browser.new_page(viewport={"width": 1100, "height": 900}), url)
        admin.login(ADMIN_KEY, "alice")
        rows = admin.page.locator("#tasks tbody tr")
        assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.task)")) == ["act-as", "grooming", "summarize"]
        admin.page.get_by_role("link", name="v2 vs v1", exact=False).click()
        admin.page.wait_for_selector("#difference-chart .uplot")
        assert "running" in admin.page.locator(".headline").inner_text()
        assert "confidence sequence" in admin.page.locator("#difference-chart .u-title").inner_text()
        assert admin.page.evaluate("document.getElementById('difference-chart').chart.axes.map(a => a.label)") == [
            "outcomes so far (both sides)", "difference in mean score"]
        assert (admin.outcomes("control").inner_text(), admin.outcomes("candidate").inner_text()) == ("0", "0")
        admin.page.evaluate("window.notReloaded = true")

        first = classify_and_judge(url, 6)  # fewer than the test needs: nothing is decided yet
        for side in ("control", "candidate"):  # the page polls its JSON: no reload
            playwright.expect(admin.outcomes(side)).to_have_text(str(first[side]), timeout=20_000)
        assert admin.page.evaluate("window.notReloaded") is True and admin.page.locator("#decision").is_hidden()
        shoot(admin.page, "experiment")

        controller.start()
        classify_and_judge(url, 40)
        admin.page.wait_for_selector("#decision:not([hidden])", timeout=30_000)
        assert "promote" in admin.page.locator("#decision").inner_text()
        assert admin.page.evaluate("window.notReloaded") is True
        wait_until(lambda: registry.aliases.of("grooming") == {"production": 2}, timeout=10)

        admin.page.goto(f"{url}/ui/tasks/grooming")
        assert admin.page.get_by_role("textbox", name="Alias").input_value() == "production"
        assert admin.page.get_by_role("combobox", name="Version").count() == 1
        admin.page.get_by_role("button", name="Roll back production to v1…").click()
        assert "Roll grooming:production back from version 2 to version 1?" in admin.page.locator(".question").inner_text()
        admin.page.get_by_role("button", name="Confirm").click()
        admin.page.wait_for_url(f"{url}/ui/tasks/grooming?**")
        assert registry.aliases.of("grooming") == {"production": 1}
        latest = admin.page.locator("#history li").first
        assert "alias" in latest.inner_text() and latest.locator(".actor").inner_text() == "admin:alice"
        shoot(admin.page, "task")
        admin.page.goto(f"{url}/ui/")
        wait_until(lambda: getattr(registry.traffic.last_hour().tasks.get("grooming"), "requests", 0) == 46, timeout=10)
        admin.page.reload()
        assert admin.page.locator('tr[data-task="grooming"] td').nth(6).inner_text() == "46"
        shoot(admin.page, "tasks")
        for path in ("/ui/", "/ui/tasks/grooming", "/ui/tasks/grooming/experiment"):  # a phone's width: no sideways page
            admin.page.set_viewport_size({"width": 390, "height": 800})
            admin.page.goto(f"{url}{path}")
            assert admin.page.evaluate("document.documentElement.scrollWidth") <= 390, path

        tenant = Watched(browser.new_context().new_page(), url)
        tenant.login(tenant_key)
        assert tenant.page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.task)") == ["act-as"]
        foreign = tenant.page.request.get(f"{url}/ui/tasks/grooming")
        assert foreign.status == 404 and "grooming" not in foreign.text()
        assert "grooming" not in tenant.page.content()

        for watched in (admin, tenant):
            assert watched.elsewhere == [] and watched.errors == []
        browser.close()
    controller.stop()
