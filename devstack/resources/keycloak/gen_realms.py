#!/usr/bin/env python3
"""Generate the DEV-ONLY Keycloak realm imports for the telerad-broker dev/test stack.

    python3 devstack/resources/keycloak/gen_realms.py

writes hospital-a.json, hospital-b.json and northstar-reading.json next to this
file. The JSON files are the artefacts Keycloak imports (kc.sh start-dev
--import-realm); this script is their single source of truth, so edit here and
re-run rather than hand-editing three near-identical JSON files.

EVERYTHING IN HERE IS DEV/TEST ONLY: client secrets, user passwords and the TOTP
seed are published in the repository on purpose. Never reuse them anywhere real.

Target: Keycloak 26.4.x (tested with 26.4.7). See README.md in this directory.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

DEV_PASSWORD = "dev-password"  # DEV ONLY, every user
# DEV ONLY: fixed TOTP seed for user "eve" (RFC 6238, SHA1, 6 digits, 30 s).
# Base32 text, exactly what an authenticator app / pyotp takes.
EVE_TOTP_BASE32 = "ORSWYZLSMFSC2ZDFOYWWK5TFFV2G65DQ"  # = base32(b"telerad-dev-eve-totp")

REALM_ROLES = ["radiologist", "referring_physician", "auditor", "consent_registry"]

# Custom user attributes, declared in the user profile so KC 26 keeps them,
# lets admins edit them and lets users only *view* them (users must not be able
# to edit their own NPI / licenses / privileges through the account console).
CUSTOM_ATTRIBUTES = [
    # (attribute name, multivalued, display name)
    ("npi", False, "NPI"),
    ("licenses", True, "State licenses"),
    ("facility_privileges", True, "Facility privileges"),
    ("group", False, "Reading group"),
]

# Session/step-up tuning (seconds).
SSO_IDLE = 1800  # 30 min
SSO_MAX = 36000  # 10 h, a reading shift
LOA1_MAX_AGE = SSO_MAX  # password level is reused for the whole SSO session
LOA2_MAX_AGE = 300  # MFA level reused for 5 min, then OTP is asked again
AMR_MAX_AGE = SSO_MAX  # default.reference.maxAge; KC's default 0 drops amr


def user_profile_config() -> str:
    attrs = [
        {
            "name": "username",
            "displayName": "${username}",
            "validations": {
                "length": {"min": 3, "max": 255},
                "username-prohibited-characters": {},
                "up-username-not-idn-homograph": {},
            },
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "email",
            "displayName": "${email}",
            "validations": {"email": {}, "length": {"max": 255}},
            "required": {"roles": ["user"]},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "firstName",
            "displayName": "${firstName}",
            "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
            "required": {"roles": ["user"]},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
        {
            "name": "lastName",
            "displayName": "${lastName}",
            "validations": {"length": {"max": 255}, "person-name-prohibited-characters": {}},
            "required": {"roles": ["user"]},
            "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]},
            "multivalued": False,
        },
    ]
    for name, multi, display in CUSTOM_ATTRIBUTES:
        attrs.append(
            {
                "name": name,
                "displayName": display,
                "group": "telerad",
                "validations": {"length": {"max": 255}},
                "permissions": {"view": ["admin", "user"], "edit": ["admin"]},
                "multivalued": multi,
            }
        )
    cfg = {
        "attributes": attrs,
        "groups": [
            {
                "name": "user-metadata",
                "displayHeader": "User metadata",
                "displayDescription": "Attributes, which refer to user metadata",
            },
            {
                "name": "telerad",
                "displayHeader": "Teleradiology credentials (admin-managed)",
                "displayDescription": "NPI, licenses, facility privileges, reading group",
            },
        ],
        # Anything not declared above is dropped from profile updates.
        # ADMIN_VIEW keeps stray attributes visible to admins only.
        "unmanagedAttributePolicy": "ADMIN_VIEW",
    }
    return json.dumps(cfg, separators=(",", ":"))


def attr_mapper(name: str, multivalued: bool) -> dict:
    return {
        "name": f"claim-{name}",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-usermodel-attribute-mapper",
        "consentRequired": False,
        "config": {
            "user.attribute": name,
            "claim.name": name,
            "jsonType.label": "String",
            "multivalued": str(multivalued).lower(),
            "aggregate.attrs": "false",
            "id.token.claim": "true",
            "access.token.claim": "true",
            "userinfo.token.claim": "true",
            "introspection.token.claim": "true",
        },
    }


def common_mappers() -> list[dict]:
    mappers = [attr_mapper(name, multi) for name, multi, _ in CUSTOM_ATTRIBUTES]
    mappers += [
        {
            # realm roles flattened into a top-level "roles" array
            "name": "claim-roles",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-usermodel-realm-role-mapper",
            "consentRequired": False,
            "config": {
                "claim.name": "roles",
                "jsonType.label": "String",
                "multivalued": "true",
                "id.token.claim": "true",
                "access.token.claim": "true",
                "userinfo.token.claim": "true",
                "introspection.token.claim": "true",
            },
        },
        {
            # amr from the "default.reference.value" of the executions that ran
            "name": "claim-amr",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-amr-mapper",
            "consentRequired": False,
            "config": {
                "id.token.claim": "true",
                "access.token.claim": "true",
                "introspection.token.claim": "true",
            },
        },
        {
            # every access token (both clients) carries aud "telerad-broker"
            "name": "aud-telerad-broker",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "consentRequired": False,
            "config": {
                "included.client.audience": "telerad-broker",
                "id.token.claim": "false",
                "access.token.claim": "true",
                "introspection.token.claim": "true",
            },
        },
    ]
    # "acr" comes from Keycloak's built-in default client scope "acr"
    # (mapper oidc-acr-mapper, ID + access token); "sub"/"auth_time" from "basic".
    return mappers


def clients(suffix: str) -> list[dict]:
    loopback = ["http://127.0.0.1/*", "http://[::1]/*", "http://localhost/*"]
    common_attrs = {
        "access.token.signed.response.alg": "RS256",
        "id.token.signed.response.alg": "RS256",
        "use.refresh.tokens": "true",
        "client_credentials.use_refresh_token": "false",
    }
    return [
        {
            "clientId": "telerad-broker",
            "name": "telerad-broker (DEV ONLY)",
            "description": f"DEV ONLY - zero-trust access broker, OIDC auth code + PKCE S256. "
            f"Secret 'dev-broker-secret-{suffix}' is a published dev value.",
            "enabled": True,
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "secret": f"dev-broker-secret-{suffix}",
            "standardFlowEnabled": True,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "serviceAccountsEnabled": False,
            "frontchannelLogout": False,
            "fullScopeAllowed": False,
            "consentRequired": False,
            # Keycloak 26 (RedirectUtils): for http://127.0.0.1, http://[::1] and
            # http://localhost it retries the match with the port removed, so these
            # port-less patterns accept any loopback port (RFC 8252 7.3).
            "redirectUris": loopback,
            "webOrigins": [],
            "attributes": {
                **common_attrs,
                "pkce.code.challenge.method": "S256",
                "post.logout.redirect.uris": "##".join(loopback),
                "backchannel.logout.session.required": "true",
                "backchannel.logout.revoke.offline.tokens": "false",
                # backchannel.logout.url left unset for now.
            },
            "protocolMappers": common_mappers(),
        },
        {
            "clientId": "telerad-api",
            "name": "telerad-api (DEV ONLY)",
            "description": f"DEV ONLY - tokens for tests and CLIs: password grant and client credentials. "
            f"Secret 'dev-api-secret-{suffix}' is a published dev value.",
            "enabled": True,
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "secret": f"dev-api-secret-{suffix}",
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": True,
            "serviceAccountsEnabled": True,
            "frontchannelLogout": False,
            "fullScopeAllowed": False,
            "consentRequired": False,
            "redirectUris": [],
            "webOrigins": [],
            "attributes": dict(common_attrs),
            "protocolMappers": common_mappers(),
        },
        {
            "clientId": "consent-registry",
            "name": "consent-registry (DEV ONLY)",
            "description": f"DEV ONLY - the hospital's consent registry: client credentials only. "
            f"Secret 'dev-consent-secret-{suffix}' is a published dev value.",
            "enabled": True,
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "secret": f"dev-consent-secret-{suffix}",
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "serviceAccountsEnabled": True,
            "frontchannelLogout": False,
            "fullScopeAllowed": False,
            "consentRequired": False,
            "redirectUris": [],
            "webOrigins": [],
            "attributes": dict(common_attrs),
            "protocolMappers": common_mappers(),
        },
    ]


def registry_account(facility: str) -> dict:
    """The consent registry client's service account: role consent_registry at one facility."""
    return {
        "username": "service-account-consent-registry",
        "enabled": True,
        "serviceAccountClientId": "consent-registry",
        "attributes": {"facility_privileges": [facility]},
        "realmRoles": ["consent_registry"],
    }


def amr_config(alias: str, ref: str) -> dict:
    return {
        "alias": alias,
        "config": {"default.reference.value": ref, "default.reference.maxAge": str(AMR_MAX_AGE)},
    }


def authenticator_configs() -> list[dict]:
    return [
        {"alias": "loa1-condition", "config": {"loa-condition-level": "1", "loa-max-age": str(LOA1_MAX_AGE)}},
        {"alias": "loa2-condition", "config": {"loa-condition-level": "2", "loa-max-age": str(LOA2_MAX_AGE)}},
        amr_config("amr-pwd", "pwd"),
        amr_config("amr-otp", "otp"),
        amr_config("amr-pwd-direct-grant", "pwd"),
        amr_config("amr-otp-direct-grant", "otp"),
    ]


def execution(authenticator: str, requirement: str, priority: int, config: str | None = None) -> dict:
    ex = {
        "authenticator": authenticator,
        "authenticatorFlow": False,
        "requirement": requirement,
        "priority": priority,
        "userSetupAllowed": False,
    }
    if config:
        ex["authenticatorConfig"] = config
    return ex


def subflow(alias: str, requirement: str, priority: int) -> dict:
    return {
        "authenticatorFlow": True,
        "flowAlias": alias,
        "requirement": requirement,
        "priority": priority,
        "userSetupAllowed": False,
    }


def flow(alias: str, description: str, executions: list[dict], top: bool = False, provider: str = "basic-flow") -> dict:
    return {
        "alias": alias,
        "description": description,
        "providerId": provider,
        "topLevel": top,
        "builtIn": False,
        "authenticationExecutions": executions,
    }


def authentication_flows() -> list[dict]:
    # NB: once a realm import lists authenticationFlows, Keycloak does NOT add
    # the built-in "browser", "direct grant" and "registration" flows by itself,
    # so the ones we need are spelled out here (the others are auto-created).
    return [
        # Step-up browser flow: LoA 1 = username+password, LoA 2 = + OTP.
        flow(
            "browser-loa",
            "DEV: browser flow with step-up (acr 1 = password, acr 2 = password + OTP)",
            [
                execution("auth-cookie", "ALTERNATIVE", 10),
                subflow("browser-loa forms", "ALTERNATIVE", 20),
            ],
            top=True,
        ),
        flow(
            "browser-loa forms",
            "LoA subflows",
            [
                subflow("browser-loa level 1", "CONDITIONAL", 10),
                subflow("browser-loa level 2", "CONDITIONAL", 20),
            ],
        ),
        flow(
            "browser-loa level 1",
            "LoA 1: username + password",
            [
                execution("conditional-level-of-authentication", "REQUIRED", 10, "loa1-condition"),
                execution("auth-username-password-form", "REQUIRED", 20, "amr-pwd"),
            ],
        ),
        flow(
            "browser-loa level 2",
            "LoA 2: OTP",
            [
                execution("conditional-level-of-authentication", "REQUIRED", 10, "loa2-condition"),
                execution("auth-otp-form", "REQUIRED", 20, "amr-otp"),
            ],
        ),
        # Built-in direct grant flow, plus amr references.
        flow(
            "direct grant",
            "OpenID Connect Resource Owner Grant",
            [
                execution("direct-grant-validate-username", "REQUIRED", 10),
                execution("direct-grant-validate-password", "REQUIRED", 20, "amr-pwd-direct-grant"),
                subflow("Direct Grant - Conditional OTP", "CONDITIONAL", 30),
            ],
            top=True,
        ),
        flow(
            "Direct Grant - Conditional OTP",
            "Flow to determine if the OTP is required for the authentication",
            [
                execution("conditional-user-configured", "REQUIRED", 10),
                execution("direct-grant-validate-otp", "REQUIRED", 20, "amr-otp-direct-grant"),
            ],
        ),
        # Built-in registration flow (registration itself is disabled).
        flow(
            "registration",
            "Registration flow",
            [
                {
                    "authenticator": "registration-page-form",
                    "authenticatorFlow": True,
                    "flowAlias": "registration form",
                    "requirement": "REQUIRED",
                    "priority": 10,
                    "userSetupAllowed": False,
                }
            ],
            top=True,
        ),
        flow(
            "registration form",
            "Registration form",
            [
                execution("registration-user-creation", "REQUIRED", 20),
                execution("registration-password-action", "REQUIRED", 50),
                execution("registration-recaptcha-action", "DISABLED", 60),
                execution("registration-terms-and-conditions", "DISABLED", 70),
            ],
            provider="form-flow",
        ),
    ]


def key_providers() -> list[dict]:
    # Listing any key provider switches off Keycloak's default key set, so the
    # defaults are repeated here, plus an ES256 key (published in the JWKS;
    # RS256 stays the default signing algorithm).
    def comp(name: str, provider: str, **cfg: str) -> dict:
        return {
            "name": name,
            "providerId": provider,
            "subComponents": {},
            "config": {k: [v] for k, v in {"priority": "100", **cfg}.items()},
        }

    return [
        comp("rsa-generated", "rsa-generated", keySize="2048"),
        comp("rsa-enc-generated", "rsa-enc-generated", algorithm="RSA-OAEP"),
        comp("hmac-generated-hs512", "hmac-generated", algorithm="HS512"),
        comp("aes-generated", "aes-generated"),
        comp("ecdsa-generated-p256", "ecdsa-generated", ecdsaEllipticCurveKey="P-256"),
    ]


def user(username: str, first: str, last: str, domain: str, role: str, npi: str, licenses=(), privileges=(), group=None, otp=False) -> dict:
    attrs: dict[str, list[str]] = {"npi": [npi]}
    if licenses:
        attrs["licenses"] = list(licenses)
    if privileges:
        attrs["facility_privileges"] = list(privileges)
    if group:
        attrs["group"] = [group]
    creds = [{"type": "password", "value": DEV_PASSWORD, "temporary": False, "userLabel": "DEV ONLY"}]
    if otp:
        creds.append(
            {
                "type": "otp",
                "userLabel": "DEV ONLY fixed TOTP",
                "secretData": json.dumps({"value": EVE_TOTP_BASE32}),
                "credentialData": json.dumps(
                    {
                        "subType": "totp",
                        "digits": 6,
                        "counter": 0,
                        "period": 30,
                        "algorithm": "HmacSHA1",
                        "secretEncoding": "BASE32",
                    }
                ),
            }
        )
    return {
        "username": username,
        "enabled": True,
        "email": f"{username}@{domain}",
        "emailVerified": True,
        "firstName": first,
        "lastName": last,
        "attributes": attrs,
        "credentials": creds,
        "realmRoles": [role],
        "requiredActions": [],
    }


def realm(name: str, display: str, suffix: str, users: list[dict]) -> dict:
    return {
        # NB: Keycloak rejects unknown JSON fields (no "_comment" possible), so the
        # dev-only marking lives in displayName / client descriptions / README.
        "realm": name,
        "displayName": f"{display} (DEV ONLY)",
        "enabled": True,
        "sslRequired": "external",
        "registrationAllowed": False,
        "loginWithEmailAllowed": True,
        "duplicateEmailsAllowed": False,
        "resetPasswordAllowed": False,
        "editUsernameAllowed": False,
        "rememberMe": False,
        "verifyEmail": False,
        # Brute-force detection ON. Tuned for tests: 10 failures lock for 30 s
        # (doubling up to 5 min); failures reset after 12 h.
        "bruteForceProtected": True,
        "permanentLockout": False,
        "failureFactor": 10,
        "waitIncrementSeconds": 30,
        "maxFailureWaitSeconds": 300,
        "quickLoginCheckMilliSeconds": 100,
        "minimumQuickLoginWaitSeconds": 5,
        "maxDeltaTimeSeconds": 43200,
        # Tokens / sessions
        "defaultSignatureAlgorithm": "RS256",
        "accessTokenLifespan": 300,
        "accessTokenLifespanForImplicitFlow": 300,
        "ssoSessionIdleTimeout": SSO_IDLE,
        "ssoSessionMaxLifespan": SSO_MAX,
        "clientSessionIdleTimeout": 0,
        "clientSessionMaxLifespan": 0,
        "offlineSessionIdleTimeout": 2592000,
        "accessCodeLifespan": 60,
        "accessCodeLifespanLogin": 1800,
        "accessCodeLifespanUserAction": 300,
        "revokeRefreshToken": True,
        "refreshTokenMaxReuse": 0,
        # OTP policy (RFC 6238 defaults). Codes reusable within their 30 s window
        # so tests can log eve in repeatedly without waiting (DEV ONLY).
        "otpPolicyType": "totp",
        "otpPolicyAlgorithm": "HmacSHA1",
        "otpPolicyDigits": 6,
        "otpPolicyPeriod": 30,
        "otpPolicyLookAheadWindow": 1,
        "otpPolicyInitialCounter": 0,
        "otpPolicyCodeReusable": True,
        "eventsEnabled": True,
        "eventsExpiration": 86400,
        "roles": {
            "realm": [
                {"name": r, "description": f"telerad {r} (DEV realm)", "composite": False, "clientRole": False}
                for r in REALM_ROLES
            ]
        },
        # Clients have fullScopeAllowed=false: only these roles reach tokens.
        "scopeMappings": [
            {"client": c, "roles": [r for r in REALM_ROLES if r != "consent_registry"]}
            for c in ("telerad-broker", "telerad-api")
        ]
        + [{"client": "consent-registry", "roles": ["consent_registry"]}],
        "clients": clients(suffix),
        "users": users,
        "browserFlow": "browser-loa",
        "directGrantFlow": "direct grant",
        "registrationFlow": "registration",
        "authenticationFlows": authentication_flows(),
        "authenticatorConfig": authenticator_configs(),
        "components": {
            "org.keycloak.keys.KeyProvider": key_providers(),
            "org.keycloak.userprofile.UserProfileProvider": [
                {
                    "providerId": "declarative-user-profile",
                    "subComponents": {},
                    "config": {"kc.user.profile.config": [user_profile_config()]},
                }
            ],
        },
        # No "acr.loa.map" on purpose: numeric acr_values ("1", "2") resolve to
        # the LoA levels of the browser flow and tokens carry acr "1" / "2".
        # (A map such as {"pwd":1,"mfa":2} would make tokens say "pwd"/"mfa";
        # {"1":1,"2":2} works too but lists 1 and 2 twice in discovery.)
    }


def realms() -> dict[str, dict]:
    a = "hospital-a.test"
    b = "hospital-b.test"
    n = "northstar-reading.test"
    return {
        "hospital-a": realm(
            "hospital-a",
            "Hospital A",
            "a",
            [
                user("ada", "Ada", "Aldana", a, "radiologist", "1000000001", ["US-CA"], ["st-olaf"], "northstar-reading"),
                user("ben", "Ben", "Bauer", a, "radiologist", "1000000002", ["US-NY"], ["mercy-ny"]),
                user("carla", "Carla", "Castro", a, "referring_physician", "1000000003"),
                user("dan", "Dan", "Dorsey", a, "auditor", "1000000004"),
                user("eve", "Eve", "Ekwueme", a, "radiologist", "1000000005", ["US-CA"], ["st-olaf"], otp=True),
                registry_account("st-olaf"),
            ],
        ),
        "hospital-b": realm(
            "hospital-b",
            "Hospital B",
            "b",
            [
                user("fay", "Fay", "Fischer", b, "radiologist", "2000000001", ["US-NY"], ["mercy-ny"]),
                user("gus", "Gus", "Garza", b, "referring_physician", "2000000002"),
                registry_account("mercy-ny"),
            ],
        ),
        "northstar-reading": realm(
            "northstar-reading",
            "Northstar Reading Group",
            "northstar",
            [
                user(
                    "nora", "Nora", "Nakamura", n, "radiologist", "3000000001",
                    ["US-CA", "US-NV"], ["st-olaf", "mercy-ny"], "northstar-reading",
                ),
                user("otto", "Otto", "Olsen", n, "auditor", "3000000002", group="northstar-reading"),
            ],
        ),
    }


def main() -> None:
    for name, rep in realms().items():
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(rep, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
