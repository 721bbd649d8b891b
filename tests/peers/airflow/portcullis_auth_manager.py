"""An Airflow 3 auth manager for running behind Portcullis without changing the proxy's assertion.

Stock Airflow (SimpleAuthManager) reads the caller's JWT only from `Authorization: Bearer` (or the
`_token` cookie) and needs a `role` claim. This subclass of SimpleAuthManager:

- copies the proxy's assertion header (default `X-Portcullis-Assertion`) into
  `Authorization: Bearer <jwt>`, replacing any Authorization the request had (the caller's own
  credential for the proxy, which Airflow could not verify); requests without the header are left
  alone, so Airflow's own tokens (task execution API, /auth/token) keep working;
- gives a token without a `role` claim the role `[portcullis] default_role` (default ADMIN): the
  proxy has authorized the request already.

The signature, `kid`, `iss`, `aud`, `exp`, `iat`, `nbf` and `sub` are still checked by Airflow
against `[api_auth] trusted_jwks_url`, `jwt_issuer` and `jwt_audience`.

Enable with (start.sh does this for AIRFLOW_PEER_AUTH_MANAGER=portcullis):
  PYTHONPATH=<this directory>
  AIRFLOW__CORE__AUTH_MANAGER=portcullis_auth_manager.PortcullisAuthManager
  AIRFLOW__PORTCULLIS__ASSERTION_HEADER=X-Portcullis-Assertion   (optional)
  AIRFLOW__PORTCULLIS__DEFAULT_ROLE=ADMIN                        (optional: VIEWER, USER, OP, ADMIN)
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.configuration import conf


class AssertionToBearer:
    """Pure ASGI middleware: `<header>: <jwt>` becomes `Authorization: Bearer <jwt>`."""

    def __init__(self, app, header: str = "X-Portcullis-Assertion") -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            value = next((v for k, v in headers if k == self.header), None)
            if value is not None:
                scope = dict(scope)
                scope["headers"] = [(k, v) for k, v in headers if k not in (b"authorization", self.header)]
                scope["headers"].append((b"authorization", b"Bearer " + value.strip()))
        await self.app(scope, receive, send)


class PortcullisAuthManager(SimpleAuthManager):
    """SimpleAuthManager that trusts the proxy's identity assertion as described above."""

    def deserialize_user(self, token: dict[str, Any]) -> SimpleAuthManagerUser:
        role = token.get("role") or conf.get("portcullis", "default_role", fallback="ADMIN")
        return SimpleAuthManagerUser(username=token["sub"], role=role, teams=token.get("teams"))

    def get_fastapi_middlewares(self):
        header = conf.get("portcullis", "assertion_header", fallback="X-Portcullis-Assertion")
        return [*super().get_fastapi_middlewares(), (AssertionToBearer, {"header": header})]
