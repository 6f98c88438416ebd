"""authlib's Starlette client, imported once and quietly.

authlib 1.9 warns at import that its httpx integration prefers the httpx2 fork; we use httpx,
which it still supports, and keep that notice out of every start-up log.
"""

import warnings

with warnings.catch_warnings():
    import authlib.deprecate  # noqa: F401 - installs an "always" filter; ours must follow it

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.starlette_client import OAuth

__all__ = ["OAuth", "OAuthError"]
