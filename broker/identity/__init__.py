"""Identity: OIDC browser login and bearer-token validation, ending in one ``Principal``.

Routes depend on :data:`broker.identity.dependencies.CurrentPrincipal`.
"""

from broker.identity.bearer import BearerValidator, TokenRejected
from broker.identity.principal import Principal

__all__ = ["BearerValidator", "Principal", "TokenRejected"]
