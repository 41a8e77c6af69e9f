"""The console's routes: server-rendered pages (Jinja2), the JSON their charts poll, and the
admin's actions, on a FastAPI app that `promptmux ui` serves alone and `promptmux serve`
mounts at `/ui`.

Every task a route names is checked against the viewer's scope first: a foreign task and
an absent one get the same 404. Pages that need a login redirect to it; JSON answers 401.
Every action asks for confirmation on a page of its own, then makes the registry call the
CLI makes, with the viewer's name as the actor in the history. The assets (the page script,
its stylesheet, uPlot for the charts) are package files served by the app; a
Content-Security-Policy keeps the browser from fetching anything from another host.
"""

from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from promptmux.core.errors import NotFoundError, PromptmuxError
from promptmux.registry import Registry
from promptmux.registry.names import parse_version
from promptmux.serving.console.access import COOKIE, COOKIE_PATH, OPEN, SESSION_S, ConsoleAccess, Viewer
from promptmux.serving.console.views import OutcomeLogs, experiment_view, task_detail, task_rows, tenant_rows
from promptmux.serving.rollouts.loop import end_by_hand

PACKAGE = files("promptmux.serving.console")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
ROLLOUT_ACTIONS = {
    "promote": "promote the candidate: production moves to it and the rollout ends",
    "rollback": "roll back: production stays on (or returns to) the control and the rollout ends",
    "pause": "pause: hold the current split and stop the controller deciding",
    "stop": "stop: end the split; all traffic goes to production",
}


class LoginRequired(Exception):
    pass


class Missing(Exception):
    """A task, tenant or page the viewer may not see, or that does not exist: one answer for both."""


async def _secured(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers["content-security-policy"] = CSP
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    return response


def console_app(registry: Registry, admin_key: str | None = None, allow_edits: bool = False,
                refresh_s: float = 3.0) -> FastAPI:
    """The console over `registry`, to be served (or mounted) at `/ui`."""
    app = FastAPI(title="promptmux console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BaseHTTPMiddleware, dispatch=_secured)
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    access = ConsoleAccess(registry, admin_key, allow_edits)
    logs = OutcomeLogs(registry)

    def viewer_of(request: Request) -> Viewer:
        viewer = access.viewer(request)
        if viewer is None:
            raise LoginRequired
        return viewer

    def visible(viewer: Viewer, task: str) -> str:
        if not viewer.sees(task) or not _exists(registry, task):
            raise Missing
        return task

    def page(request: Request, template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {
            "viewer": viewer, "csrf": access.csrf(request), "guarded": viewer is None or viewer.tenant is not None or viewer.name != OPEN,
            "refresh_s": refresh_s,
            "message": request.query_params.get("done"), **context}, status_code=status)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
            return JSONResponse({"error": "log in first: POST a key to /ui/login"}, status_code=401)
        return RedirectResponse(request.url_for("login_page"), status_code=303)

    @app.exception_handler(Missing)
    async def missing(request: Request, exc: Missing) -> Response:
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
            return JSONResponse({"error": "not found"}, status_code=404)
        return page(request, "message.html", access.viewer(request), 404, title="Not found",
                    text="There is no such page, or it is not yours to see.")

    @app.exception_handler(PromptmuxError)
    async def refused(request: Request, exc: PromptmuxError) -> Response:
        return page(request, "message.html", access.viewer(request), 400 if not isinstance(exc, NotFoundError) else 404,
                    title="Not done", text=str(exc))

    # ------------------------------------------------------------------ session
    @app.get("/login", response_class=HTMLResponse, name="login_page")
    async def login_page(request: Request) -> Response:
        return page(request, "login.html", None, failed=False)

    @app.post("/login")
    async def login(request: Request, key: Annotated[str, Form()] = "", name: Annotated[str, Form()] = "") -> Response:
        session = access.login(key.strip(), name)
        if session is None:
            return page(request, "login.html", None, 401, failed=True)
        response = RedirectResponse(request.url_for("tasks_page"), status_code=303)
        response.set_cookie(COOKIE, session, max_age=SESSION_S, path=COOKIE_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse(request.url_for("login_page"), status_code=303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    # -------------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse, name="tasks_page")
    async def tasks_page(request: Request, q: str = "") -> Response:
        viewer = viewer_of(request)
        return page(request, "tasks.html", viewer, rows=_rows(viewer, q), q=q)

    @app.get("/tasks/{task}", response_class=HTMLResponse, name="task_page")
    async def task_page(request: Request, task: str) -> Response:
        viewer = viewer_of(request)
        return page(request, "task.html", viewer, task=task_detail(registry, visible(viewer, task)))

    @app.get("/tasks/{task}/experiment", response_class=HTMLResponse, name="experiment_page")
    async def experiment_page(request: Request, task: str, at: int | None = None) -> Response:
        viewer = viewer_of(request)
        data = experiment_view(registry, visible(viewer, task), at, logs.of(task))
        return page(request, "experiment.html", viewer, x=data, actions=ROLLOUT_ACTIONS)

    @app.get("/tenants", response_class=HTMLResponse, name="tenants_page")
    async def tenants_page(request: Request) -> Response:
        viewer = _admin(viewer_of(request))
        return page(request, "tenants.html", viewer, rows=tenant_rows(registry, registry.traffic.last_hour()))

    # --------------------------------------------------------------------- JSON
    @app.get("/api/tasks")
    async def tasks_json(request: Request, q: str = "") -> dict:
        return {"tasks": _rows(viewer_of(request), q)}

    @app.get("/api/tasks/{task}")
    async def task_json(request: Request, task: str) -> dict:
        return task_detail(registry, visible(viewer_of(request), task))

    @app.get("/api/tasks/{task}/experiment")
    async def experiment_json(request: Request, task: str, at: int | None = None) -> dict:
        return experiment_view(registry, visible(viewer_of(request), task), at, logs.of(task))

    @app.get("/api/tenants")
    async def tenants_json(request: Request) -> dict:
        _admin(viewer_of(request))
        return {"tenants": tenant_rows(registry, registry.traffic.last_hour())}

    def _rows(viewer: Viewer, query: str) -> list[dict[str, Any]]:
        names = [n for n in registry.tasks.names() if viewer.sees(n) and query.strip().lower() in n.lower()]
        return task_rows(registry, names, registry.traffic.last_hour())

    # ------------------------------------------------------------------ actions
    def act(request: Request, csrf: str, confirmed: str, question: str, fields: dict[str, str]) -> Viewer | Response:
        """The viewer, once an action is allowed and confirmed; else the answer to give instead."""
        viewer = viewer_of(request)
        if not viewer.edits:
            return page(request, "message.html", viewer, 403, title="Read-only",
                        text="This console is read-only: log in with the admin key (or start it with --allow-edits).")
        if not access.same_site_post(request, csrf):
            return page(request, "message.html", viewer, 403, title="Refused",
                        text="This form did not come from this console's page; reload it and try again.")
        if confirmed != "yes":
            back = request.headers.get("referer") or str(request.url_for("tasks_page"))
            return page(request, "confirm.html", viewer, question=question, action=request.url.path, fields=fields, back=back)
        return viewer

    @app.post("/tasks/{task}/alias")
    async def move_alias(request: Request, task: str, alias: Annotated[str, Form()], version: Annotated[str, Form()],
                         csrf: Annotated[str, Form()] = "", confirmed: Annotated[str, Form()] = "") -> Response:
        visible(viewer_of(request), task)
        number = parse_version(version.strip())
        if number is None:
            raise PromptmuxError(f"invalid version {version!r}: a version number")
        outcome = act(request, csrf, confirmed, f"Point {task}:{alias} at version {number}?",
                      {"alias": alias, "version": str(number)})
        if not isinstance(outcome, Viewer):
            return outcome
        registry.aliases.set(task, alias, registry.versions.get(task, number).version, actor=outcome.name,
                             reason="moved in the console")
        return _back(request, "task_page", task, f"{task}:{alias} now points at version {number}")

    @app.post("/tasks/{task}/alias/{alias}/rollback")
    async def roll_back_alias(request: Request, task: str, alias: str, csrf: Annotated[str, Form()] = "",
                              confirmed: Annotated[str, Form()] = "") -> Response:
        visible(viewer_of(request), task)
        record = registry.aliases.records(task).get(alias)
        if record is None or record.previous is None:
            raise PromptmuxError(f"{task}:{alias} has no earlier version to roll back to")
        outcome = act(request, csrf, confirmed, f"Roll {task}:{alias} back from version {record.version} to "
                      f"version {record.previous}?", {})
        if not isinstance(outcome, Viewer):
            return outcome
        registry.aliases.set(task, alias, record.previous, actor=outcome.name, reason="rolled back in the console")
        return _back(request, "task_page", task, f"{task}:{alias} rolled back to version {record.previous}")

    @app.post("/tasks/{task}/rollout/{action}")
    async def rollout_action(request: Request, task: str, action: str, csrf: Annotated[str, Form()] = "",
                             confirmed: Annotated[str, Form()] = "") -> Response:
        visible(viewer_of(request), task)
        if action not in ROLLOUT_ACTIONS:
            raise Missing
        outcome = act(request, csrf, confirmed, f"{task}: {ROLLOUT_ACTIONS[action]}?", {})
        if not isinstance(outcome, Viewer):
            return outcome
        if action in ("promote", "rollback"):
            change = end_by_hand(registry, logs.of(task), action, outcome.name)
            done = f"{change.action}: production → v{change.details['production']}"
        elif action == "pause":
            current = registry.rollouts.get(task)
            if current is None or registry.rollouts.policy(task) is None:
                raise PromptmuxError(f"task {task!r} has no automatic rollout running")
            registry.rollouts.set(task, current, actor=outcome.name, reason="paused in the console")
            done = "paused: the split holds, the controller no longer decides"
        else:
            registry.rollouts.clear(task, actor=outcome.name, reason="stopped in the console")
            done = "stopped: all traffic goes to production"
        return _back(request, "task_page", task, done)

    @app.post("/tenants/{name}/revoke")
    async def revoke(request: Request, name: str, csrf: Annotated[str, Form()] = "",
                     confirmed: Annotated[str, Form()] = "") -> Response:
        _admin(viewer_of(request))
        outcome = act(request, csrf, confirmed, f"Revoke tenant {name}? Its key stops working on every replica.", {})
        if not isinstance(outcome, Viewer):
            return outcome
        registry.tenants.revoke(name)
        return RedirectResponse(f"{request.url_for('tenants_page')}?{urlencode({'done': f'revoked {name}'})}", status_code=303)

    return app


def _admin(viewer: Viewer) -> Viewer:
    if not viewer.admin:
        raise Missing
    return viewer


def _exists(registry: Registry, task: str) -> bool:
    try:
        return registry.tasks.exists(task)
    except PromptmuxError:  # not even a valid name
        return False


def _back(request: Request, route: str, task: str, done: str) -> Response:
    return RedirectResponse(f"{request.url_for(route, task=task)}?{urlencode({'done': done})}", status_code=303)
