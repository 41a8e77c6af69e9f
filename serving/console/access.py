"""Who looks at the console, and what they may do: the API's keys, exchanged once for a
session cookie.

A browser cannot send a bearer key, so the login form takes it once and answers with a
signed cookie (HttpOnly, SameSite=Strict, path `/ui`) naming the viewer: the admin, or a
tenant with the digest of its key. Each request checks the signature, the expiry, and that
the tenant still holds that key (a revoked tenant's session ends with its key). The
signing key is derived from the registry's feedback key, so every replica and `promptmux
ui` on the same registry accept each other's sessions; no key is ever stored in the cookie.

Scope is the API's: a tenant sees the tasks its patterns match, and a foreign task is the
same "not found" as an absent one. Only the admin edits, through forms that carry a token
derived from the session (and a cross-site POST is refused before that: SameSite keeps the
cookie home, and the Origin header must be this host). With no admin key and no tenant the
console is open and read-only, unless `allow_edits`.
"""

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from starlette.requests import Request

from promptmux.core.errors import NotFoundError
from promptmux.registry import Registry
from promptmux.registry.tenant_store import TenantRecord, key_digest
from promptmux.serving.console import CONSOLE_PATH
from promptmux.serving.runtime.tenants import ADMIN, identify

COOKIE = "promptmux_console"
COOKIE_PATH = CONSOLE_PATH
SESSION_S = 12 * 3600
OPEN = "console"  # the actor of an edit made on an open console (`--allow-edits`)


@dataclass(frozen=True)
class Viewer:
    """Who a console request comes from: the admin, a tenant, or nobody logged in."""

    name: str  # the actor written into the history: "admin", "admin:<who>", a tenant's name, or OPEN
    tenant: TenantRecord | None = None
    edits: bool = False

    def sees(self, task: str) -> bool:
        return self.tenant is None or self.tenant.allows(task)

    @property
    def admin(self) -> bool:
        return self.tenant is None


class ConsoleAccess:
    def __init__(self, registry: Registry, admin_key: str | None, allow_edits: bool) -> None:
        self.registry, self.admin_key, self.allow_edits = registry, admin_key, allow_edits
        self._secret = hmac.new(registry.outcomes.feedback_key(), b"promptmux console session", hashlib.sha256).digest()

    def open(self) -> bool:
        """No admin key and no tenant: nobody can log in, everybody sees everything."""
        return self.admin_key is None and not self.registry.tenants.all()

    def viewer(self, request: Request) -> Viewer | None:
        """The viewer of a request: from its session cookie, or everybody on an open console;
        None when it must log in."""
        if self.open():
            return Viewer(OPEN, edits=self.allow_edits)
        session = self._read(request.cookies.get(COOKIE, ""))
        if session is None or session["exp"] < time.time():
            return None
        if session["who"] == "admin":
            return Viewer(session["actor"], edits=True) if self.admin_key is not None else None
        try:
            tenant = self.registry.tenants.get(session["who"])
        except NotFoundError:
            return None
        if tenant.revoked_at is not None or not hmac.compare_digest(tenant.key_sha256, session["key"]):
            return None
        return Viewer(tenant.name, tenant)

    def login(self, key: str, name: str = "") -> str | None:
        """The session cookie's value for a key, or None when the key opens nothing."""
        caller = identify(key, self.admin_key, self.registry.tenants.all())
        if caller is None:
            return None
        if caller is ADMIN:
            who = "".join(c for c in name.strip() if c.isalnum() or c in "._-")[:32]
            session = {"who": "admin", "actor": f"admin:{who}" if who else "admin"}
        else:
            session = {"who": caller.name, "key": key_digest(key)}
        return self._sign({**session, "exp": time.time() + SESSION_S})

    def csrf(self, request: Request) -> str:
        """The token every form of this session carries back."""
        return hmac.new(self._secret, b"csrf:" + request.cookies.get(COOKIE, "").encode(), hashlib.sha256).hexdigest()

    def same_site_post(self, request: Request, token: str) -> bool:
        """A POST from this console's own page: its Origin (when sent) is this host, and it
        carries this session's token."""
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            return False
        return hmac.compare_digest(token, self.csrf(request))

    def _sign(self, session: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(session, separators=(",", ":")).encode()).decode()
        return f"{body}.{hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()}"

    def _read(self, cookie: str) -> dict | None:
        body, _, signature = cookie.partition(".")
        expected = hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()
        if not body or not hmac.compare_digest(signature, expected):
            return None
        try:
            return json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
