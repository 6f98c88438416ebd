"""The one identity every request ends in, whatever the IdP or the way of logging in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as the policy sees them."""

    id: str  # the policy's subject id, e.g. "npi:1000000001"
    issuer: str
    subject: str  # the IdP's `sub`
    roles: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    privileges: tuple[str, ...] = ()
    group: str | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: int | None = None
    expires_at: int = 0
    via: Literal["bearer", "session"] = "bearer"
    session_id: str | None = None  # our session (browser) or None
    idp_session_id: str | None = None  # the IdP's `sid`, for back-channel logout
    token_id: str | None = None  # `jti` of the bearer token
    client_id: str | None = None
    name: str | None = field(default=None, compare=False)

    def policy_subject(self) -> dict[str, Any]:
        """The ``input.subject`` document the policy receives."""
        return {
            "id": self.id,
            "issuer": self.issuer,
            "roles": list(self.roles),
            "licenses": list(self.licenses),
            "privileges": list(self.privileges),
            "group": self.group,
            "acr": self.acr,
            "amr": list(self.amr),
            "auth_time": self.auth_time,
        }
