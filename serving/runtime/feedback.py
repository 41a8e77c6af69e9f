"""Request ids that feedback can be sent with, signed so that no client can forge one.

Every response carries an id per output. The id holds what the server needs to count
the feedback without any shared state: the task, the version and rollout variant that
served it, the automatic rollout whose split routed it (if one did: only such outcomes
decide that experiment) and, for a classification, the label it answered. An HMAC-SHA256 signature
under the deployment's key (kept in the registry, so every replica on every node shares
it) makes it tamper-proof: `pmx1.<payload>.<signature>`, both base64url.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets

from pydantic import ValidationError

from promptmux.core.errors import ForgedFeedbackId, InvalidRequestError
from promptmux.core.strict_model import StrictModel

PREFIX = "pmx1"
FORGED = "feedback id not issued by this deployment (its signature does not match)"
SIGNATURE_BYTES = 16


class Issued(StrictModel):
    """What a feedback id says about the request it was issued for."""

    task: str
    version: int
    variant: str
    experiment: str | None = None  # the automatic rollout that routed the request
    label: str | None = None  # the label answered, for a classification
    tenant: str | None = None  # the tenant it was issued to; only that tenant (or the admin) sends its feedback
    nonce: str  # every request's id is its own


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackIds:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES])

    def issue(self, task: str, version: int, variant: str, experiment: str | None = None, label: str | None = None,
              tenant: str | None = None) -> str:
        served = Issued(task=task, version=version, variant=variant, experiment=experiment, label=label, tenant=tenant,
                        nonce=secrets.token_hex(8))
        body = _b64(json.dumps(served.model_dump(exclude_none=True), separators=(",", ":")).encode())
        return f"{PREFIX}.{body}.{self._sign(body)}"

    def verify(self, feedback_id: str, tenant: str | None = None) -> Issued:
        """The id's contents; `InvalidRequestError` if it is not an id at all, `ForgedFeedbackId` if
        its signature is not this deployment's, or if `tenant` (the caller; None for the admin)
        is not the tenant it was issued to: to another tenant it reads exactly as a forged id."""
        prefix, _, rest = feedback_id.partition(".")
        body, _, signature = rest.partition(".")
        if prefix != PREFIX or not body or not signature:
            raise InvalidRequestError(f"malformed feedback id: expected the {PREFIX}.… id of a response")
        if not hmac.compare_digest(signature, self._sign(body)):
            raise ForgedFeedbackId(FORGED)
        try:
            served = Issued.model_validate_json(_unb64(body))
        except (ValidationError, binascii.Error, ValueError) as exc:
            raise InvalidRequestError("malformed feedback id: its contents cannot be read") from exc
        if tenant is not None and served.tenant != tenant:
            raise ForgedFeedbackId(FORGED)
        return served
