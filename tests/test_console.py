"""The console (`serving/console/`) over a real registry, through its real ASGI app: scope
(every page and JSON endpoint with every key × task), sessions, cross-site refusals, the
admin's actions and their history, the series of a large experiment, and the traffic every
replica writes. The browser test is `test_console_browser.py`."""

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import build_registry

from promptmux.core.clock import utc_now
from promptmux.registry import Registry
from promptmux.registry.policy import RolloutPolicy, SequentialTest
from promptmux.registry.traffic_store import TrafficCounts, TrafficWindow
from promptmux.serving.bench.console import write_outcomes
from promptmux.serving.console.access import COOKIE
from promptmux.serving.console.app import console_app
from promptmux.serving.rollouts.series import MAX_POINTS
from promptmux.serving.runtime.traffic import TrafficCounters

ADMIN_KEY = "admin-secret-key"
TASKS = ("act-as", "summarize", "grooming")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, dict[str, str]]:
    """The helpers' three tasks, an automatic rollout on grooming, and two tenants: alpha sees
    act-as and summarize (`a*`, `summarize`), beta sees grooming."""
    registry = build_registry(tmp_path_factory.mktemp("console") / "registry")
    registry.aliases.set("grooming", "production", 1)
    registry.rollouts.start("grooming", RolloutPolicy(control=1, candidate=2))
    keys = {"admin": ADMIN_KEY}
    for name, patterns in (("alpha", ["a*", "summarize"]), ("beta", ["grooming"])):
        keys[name] = registry.tenants.add(name, patterns)[1]
    return registry, keys


def client(registry: Registry, key: str | None = None, admin_key: str | None = ADMIN_KEY, **options) -> TestClient:
    """A browser's view of the console at /ui: logged in with `key` when given."""
    app = console_app(registry, admin_key, **options)
    browser = TestClient(app, base_url="http://testserver/ui", root_path="/ui", follow_redirects=False)
    if key is not None:
        answer = browser.post("/login", data={"key": key, "name": "alice"})
        assert answer.status_code == 303, answer.text
    return browser


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def endpoints(task: str) -> list[tuple[str, str]]:
    return [("GET", f"/tasks/{task}"), ("GET", f"/tasks/{task}/experiment"), ("GET", f"/tasks/{task}/experiment?at=1"),
            ("GET", f"/api/tasks/{task}"), ("GET", f"/api/tasks/{task}/experiment"),
            ("POST", f"/tasks/{task}/alias"), ("POST", f"/tasks/{task}/alias/production/rollback"),
            ("POST", f"/tasks/{task}/rollout/promote"), ("POST", f"/tasks/{task}/rollout/stop")]


def test_every_page_and_endpoint_with_every_key_and_task_reveals_no_foreign_task(shared) -> None:
    registry, keys = shared
    own = {"admin": set(TASKS), "alpha": {"act-as", "summarize"}, "beta": {"grooming"}}
    for who, key in keys.items():
        browser = client(registry, key)
        foreign = set(TASKS) - own[who]
        listing = [browser.get("/").text, browser.get("/api/tasks").text, browser.get("/tenants").text,
                   browser.get("/api/tenants").text, browser.get("/?q=a").text]
        for task in TASKS + ("never-was",):
            for method, path in endpoints(task):
                answer = browser.request(method, path, data={"alias": "production", "version": "1", "csrf": "x"})
                listing.append(answer.text)
                if task in own[who]:
                    assert answer.status_code in (200, 400, 403, 404), (who, method, path, answer.status_code)  # 404: no rollout
                else:  # foreign or absent: the same answer, whichever
                    absent = browser.request(method, path.replace(task, "never-was"), data={"alias": "production",
                                                                                            "version": "1", "csrf": "x"})
                    assert answer.status_code == 404 and absent.status_code == 404, (who, method, path)
                    assert answer.text.replace(task, "never-was") == absent.text
        revealed = {task for task in foreign for text in listing if task in text}
        assert revealed == set(), f"{who} saw {revealed}"
        assert all(task in listing[0] for task in own[who])  # and sees its own


def test_the_tenants_page_is_the_admins_alone(shared) -> None:
    registry, keys = shared
    assert client(registry, keys["alpha"]).get("/tenants").status_code == 404
    page = client(registry, keys["admin"]).get("/tenants")
    assert page.status_code == 200 and "alpha" in page.text and "beta" in page.text and "a*, summarize" in page.text


def test_a_key_is_exchanged_once_for_a_strict_http_only_cookie(shared) -> None:
    registry, keys = shared
    browser = client(registry)
    assert browser.get("/").status_code == 303 and browser.get("/").headers["location"].endswith("/ui/login")
    assert browser.get("/api/tasks").status_code == 401
    refused = browser.post("/login", data={"key": "wrong"})
    assert refused.status_code == 401 and "opens nothing" in refused.text and COOKIE not in browser.cookies
    answer = browser.post("/login", data={"key": keys["beta"]})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert keys["beta"] not in cookie and ADMIN_KEY not in cookie
    assert browser.get("/api/tasks").json()["tasks"][0]["name"] == "grooming"
    session = browser.cookies[COOKIE]
    browser.cookies.clear()
    browser.cookies.set(COOKIE, session[:10] + ("b" if session[10] != "b" else "c") + session[11:])  # tampered: no session
    assert browser.get("/api/tasks").status_code == 401


def test_a_revoked_tenants_session_ends_with_its_key(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    _, key = registry.tenants.add("gamma", ["act-as"])
    browser = client(registry, key)
    assert browser.get("/api/tasks").status_code == 200
    registry.tenants.revoke("gamma")
    assert browser.get("/api/tasks").status_code == 401


def test_actions_are_confirmed_refused_cross_site_and_written_into_the_history_with_the_admins_name(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    _, tenant_key = registry.tenants.add("alpha", ["act-as"])
    admin, tenant = client(registry, ADMIN_KEY), client(registry, tenant_key)
    assert "Move…" not in tenant.get("/tasks/act-as").text  # a tenant reads, never edits
    refused = tenant.post("/tasks/act-as/alias", data={"alias": "production", "version": "2", "csrf": "x"})
    assert refused.status_code == 403 and "read-only" in refused.text
    page = admin.get("/tasks/act-as").text
    token = csrf_of(page)
    assert admin.post("/tasks/act-as/alias", data={"alias": "production", "version": "2", "csrf": "x"}).status_code == 403
    foreign = admin.post("/tasks/act-as/alias", data={"alias": "production", "version": "2", "csrf": token},
                         headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403 and "did not come from this console" in foreign.text
    asked = admin.post("/tasks/act-as/alias", data={"alias": "production", "version": "2", "csrf": token})
    assert asked.status_code == 200 and "Point act-as:production at version 2?" in asked.text
    assert registry.aliases.of("act-as") == {}  # nothing yet: it asked
    done = admin.post("/tasks/act-as/alias", data={"alias": "production", "version": "2", "csrf": token,
                                                   "confirmed": "yes"})
    assert done.status_code == 303 and registry.aliases.of("act-as") == {"production": 2}
    registry.aliases.set("act-as", "production", 3)
    rolled = admin.post("/tasks/act-as/alias/production/rollback", data={"csrf": token, "confirmed": "yes"})
    assert rolled.status_code == 303 and registry.aliases.of("act-as") == {"production": 2}
    changes = [(c.actor, c.details.get("version"), c.reason) for c in registry.history("act-as") if c.action == "alias"]
    assert changes == [("admin:alice", 2, "moved in the console"), ("manual", 3, ""),
                       ("admin:alice", 2, "rolled back in the console")]
    timeline = admin.get("/tasks/act-as").text
    assert timeline.count('<span class="actor">admin:alice</span>') == 2 and ADMIN_KEY not in timeline
    bad = admin.post("/tasks/act-as/alias", data={"alias": "production", "version": "9", "csrf": token, "confirmed": "yes"})
    assert bad.status_code == 404 and "version 9" in bad.text and registry.aliases.of("act-as") == {"production": 2}


def test_promote_pause_and_stop_end_a_running_rollout_as_the_cli_would(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("grooming", "production", 1)
    admin = client(registry, ADMIN_KEY)
    token = csrf_of(admin.get("/tasks/grooming").text)

    def act(action: str) -> None:
        answer = admin.post(f"/tasks/grooming/rollout/{action}", data={"csrf": token, "confirmed": "yes"})
        assert answer.status_code == 303, answer.text

    registry.rollouts.start("grooming", RolloutPolicy(control=1, candidate=2))
    page = admin.get("/tasks/grooming/experiment").text
    assert all(f"/rollout/{action}" in page for action in ("promote", "rollback", "pause", "stop"))
    act("promote")
    assert registry.aliases.of("grooming") == {"production": 2} and registry.rollouts.get("grooming") is None
    ended = admin.get("/api/tasks/grooming/experiment").json()
    assert ended["status"] == "promote" and ended["decision"]["actor"] == "admin:alice"
    assert "/rollout/promote" not in admin.get("/tasks/grooming/experiment").text  # nothing to act on any more
    registry.rollouts.start("grooming", RolloutPolicy(control=2, candidate=1, steps=[10, 30]))
    act("pause")
    assert registry.rollouts.policy("grooming") is None and registry.rollouts.get("grooming").variants[1].weight == 10
    act("stop")
    assert registry.rollouts.get("grooming") is None
    assert [c.actor for c in registry.history("grooming")][-3:] == ["manual", "admin:alice", "admin:alice"]
    assert admin.post("/tasks/grooming/rollout/promote", data={"csrf": token, "confirmed": "yes"}).status_code == 404


def test_an_open_console_is_read_only_unless_edits_are_allowed(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    closed = client(registry, admin_key=None)
    page = closed.get("/tasks/act-as").text
    assert "read-only" in page and "Move…" not in page
    refused = closed.post("/tasks/act-as/alias", data={"alias": "production", "version": "1", "csrf": "x"})
    assert refused.status_code == 403 and registry.aliases.of("act-as") == {}
    editable = client(registry, admin_key=None, allow_edits=True)
    token = csrf_of(editable.get("/tasks/act-as").text)
    done = editable.post("/tasks/act-as/alias", data={"alias": "production", "version": "1", "csrf": token,
                                                      "confirmed": "yes"})
    assert done.status_code == 303 and registry.history("act-as")[-1].actor == "console"


def test_bench_console_draws_ten_thousand_outcomes_from_a_thinned_series(cli, tmp_path: Path) -> None:
    """`promptmux bench console`: the page of a 10,000-outcome experiment, and the JSON its
    chart polls, thinned to MAX_POINTS (its time is the bench's figure, in docs/benchmarks.md)."""
    result = cli("bench", "console", "--json", str(tmp_path / "out.json"))
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out.json").read_text())
    large, small = report["experiments"]["large"], report["experiments"]["small"]
    assert (large["outcomes"], large["points"]) == (10_000, MAX_POINTS) and small["outcomes"] == 100
    assert report["chart_json_kb"] < 200 and "page_s" in result.out


def test_the_series_keeps_the_last_point_and_its_band_holds_the_difference(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("grooming", "production", 1)
    registry.rollouts.start("grooming", RolloutPolicy(control=1, candidate=2, steps=[50],
                                                      test=SequentialTest(max_samples=20_000)))
    write_outcomes(registry, "grooming", 1_000)
    data = client(registry, ADMIN_KEY).get("/api/tasks/grooming/experiment").json()
    series = data["series"]
    assert len(series["outcomes"]) == MAX_POINTS and series["outcomes"][-1] == 1_000 == data["outcomes"]
    assert all(-1 <= low <= d <= high <= 1 for low, d, high in zip(series["low"], series["difference"], series["high"]))
    assert series["difference"][-1] == data["figures"]["difference"]


def test_every_replicas_traffic_is_summed_over_the_last_hour_and_old_hours_are_removed(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    for replica, requests in (("node-a:1", 3), ("node-b:2", 2)):
        counters = TrafficCounters()
        for i in range(requests):
            counters.task("act-as", "error" if i == 0 else "ok")
            counters.tenant("alpha", "ok", 5)
        counters.limited("alpha")
        registry.traffic.record(counters.take(replica))
        assert counters.take(replica) is None  # a new window, empty
    old = TrafficWindow(replica="node-a:1", start=utc_now() - timedelta(hours=30), end=utc_now() - timedelta(hours=30))
    old.tasks["act-as"] = TrafficCounts(requests=99)
    registry.storage.write_bytes(old.file_rel(), old.model_dump_json().encode())
    totals = registry.traffic.last_hour()
    assert (totals.tasks["act-as"].requests, totals.tasks["act-as"].errors) == (5, 2)
    assert (totals.tenants["alpha"].requests, totals.tenants["alpha"].tokens, totals.tenants["alpha"].limited) == (5, 25, 2)
    registry.traffic.record(TrafficWindow(replica="node-c:3", start=utc_now()))
    assert old.file_rel().split("/")[1] not in registry.storage.listdir("traffic")  # past the retention: removed


def test_the_console_reads_a_registry_on_s3(s3_bucket: str) -> None:
    registry = build_registry(f"{s3_bucket}/registry")
    registry.aliases.set("grooming", "production", 1)
    registry.rollouts.start("grooming", RolloutPolicy(control=1, candidate=2))
    registry.traffic.record(TrafficWindow(replica="node-a:1", start=utc_now(), tasks={"grooming": TrafficCounts(requests=4)}))
    browser = client(registry, ADMIN_KEY)
    rows = {row["name"]: row for row in browser.get("/api/tasks").json()["tasks"]}
    assert set(rows) == set(TASKS) and rows["grooming"]["requests"] == 4 and rows["grooming"]["experiment"]["share"] == 5
    assert browser.get("/tasks/grooming/experiment").status_code == 200
    token = csrf_of(browser.get("/tasks/grooming").text)
    assert browser.post("/tasks/grooming/rollout/rollback", data={"csrf": token, "confirmed": "yes"}).status_code == 303
    assert registry.rollouts.get("grooming") is None and registry.history("grooming")[-1].actor == "admin:alice"
