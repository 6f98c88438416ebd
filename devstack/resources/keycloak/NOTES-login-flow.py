#!/usr/bin/env python3
"""NOTES (documentation, not production code): drive the Keycloak browser login
headlessly - authorization code + PKCE S256 - with httpx, including the OTP
step-up, exactly as verified against Keycloak 26.4.7 with the dev realms in this
directory.

    pip install httpx            # pyotp optional; a stdlib TOTP is included
    python3 NOTES-login-flow.py --kc http://127.0.0.1:18080            # demo
    python3 NOTES-login-flow.py --kc ... --realm hospital-a --user eve --acr 2

What it does (what the broker's tests have to do):
 1. GET  {issuer}/protocol/openid-connect/auth?client_id=telerad-broker
         &response_type=code&scope=openid&redirect_uri=http://127.0.0.1:<any port>/callback
         &state&nonce&code_challenge=<S256>&code_challenge_method=S256[&acr_values=2]
    -> 200 login page, form id "kc-form-login".
 2. POST the form's action URL (HTML-unescaped) with username, password.
    -> 302 to redirect_uri?code=..&state=..&iss=..  (acr 1), or
    -> 200 OTP page, form id "kc-otp-login-form" (LoA 2 requested and the user
       has an OTP credential). POST otp=<6 digits> to its action -> 302.
       (A user WITHOUT an OTP credential asking for LoA 2 gets the
       "Mobile Authenticator Setup" page, form id "kc-totp-settings-form".)
 3. POST the code + code_verifier to the token endpoint (client_secret_basic).

Gotcha found on the way: Keycloak 26 sets AUTH_SESSION_ID / KC_RESTART with
"Secure; SameSite=None" even on plain http. Browsers treat 127.0.0.1 as secure
and send them back; Python's cookie jar does not -> Keycloak answers 400 with
event error "cookie_not_found". new_client() below clears the Secure flag.

Observed results (hospital-a, Keycloak 26.4.7):
  ada, no acr_values              -> steps [password]        acr "1" amr ["pwd"]
  eve, no acr_values              -> steps [password]        acr "1" amr ["pwd"]
  eve, acr_values=2               -> steps [password, otp]   acr "2" amr ["pwd","otp"]
  eve, claims={"id_token":{"acr":{"essential":true,"values":["2"]}}} -> same as acr_values=2
  eve, same session: acr 1 login, then acr_values=2 -> steps [otp] only, acr "2"
  eve, acr_values=2 again within 300 s (loa-max-age) -> no prompt, acr "2"
  eve, SSO re-login without acr_values after an LoA-2 login -> acr "2" (level kept)
  prompt=login                    -> password asked again, acr "1"
  refresh_token grant keeps the acr/amr of the login.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html.parser
import json
import secrets
import struct
import time
import urllib.parse

import httpx

# DEV ONLY values from gen_realms.py
DEV_PASSWORD = "dev-password"
EVE_TOTP_BASE32 = "ORSWYZLSMFSC2ZDFOYWWK5TFFV2G65DQ"
BROKER_SECRETS = {
    "hospital-a": "dev-broker-secret-a",
    "hospital-b": "dev-broker-secret-b",
    "northstar-reading": "dev-broker-secret-northstar",
}


def totp(base32_secret: str, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    """RFC 6238 TOTP (HMAC-SHA1), same as pyotp.TOTP(base32_secret).now()."""
    key = base64.b32decode(base32_secret.upper() + "=" * (-len(base32_secret) % 8))
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off : off + 4])[0] & 0x7FFFFFFF) % 10**digits
    return str(code).zfill(digits)


class _Forms(html.parser.HTMLParser):
    """Collect <form id=.. action=..> and their named <input>s (action is unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict] = {}
        self._cur: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._cur = {"action": a.get("action"), "inputs": {}}
            self.forms[a.get("id") or f"form{len(self.forms)}"] = self._cur
        elif tag == "input" and self._cur is not None and a.get("name"):
            self._cur["inputs"].setdefault(a["name"], a.get("value") or "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._cur = None


def parse_forms(page: str) -> dict[str, dict]:
    p = _Forms()
    p.feed(page)
    return p.forms


def new_client() -> httpx.Client:
    """httpx client that keeps Keycloak's Secure cookies over loopback http."""
    client = httpx.Client(follow_redirects=False, timeout=30)

    def _unsecure(_response: httpx.Response) -> None:
        for cookie in client.cookies.jar:
            cookie.secure = False

    client.event_hooks["response"] = [_unsecure]
    return client


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict:
    """Decode WITHOUT verifying (inspection only; the broker must verify via JWKS)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class LoginError(RuntimeError):
    pass


def browser_login(
    kc: str,
    realm: str,
    username: str,
    password: str = DEV_PASSWORD,
    *,
    client_id: str = "telerad-broker",
    client_secret: str | None = None,
    totp_secret: str | None = None,
    acr_values: str | None = None,
    claims: dict | None = None,
    redirect_port: int = 53682,
    client: httpx.Client | None = None,
    extra_params: dict | None = None,
) -> dict:
    """Run the whole code flow; returns {"tokens", "id_token_claims", "access_token_claims", "steps"}.

    Pass the same `client` to reuse the Keycloak SSO session (step-up scenarios).
    """
    issuer = f"{kc}/realms/{realm}"
    client_secret = client_secret or BROKER_SECRETS[realm]
    redirect_uri = f"http://127.0.0.1:{redirect_port}/callback"  # any loopback port is accepted
    verifier = _b64url(secrets.token_bytes(32))
    challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "client_id": client_id,
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": redirect_uri,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if acr_values:
        params["acr_values"] = acr_values
    if claims:
        params["claims"] = json.dumps(claims)
    params.update(extra_params or {})

    c = client or new_client()
    resp = c.get(f"{issuer}/protocol/openid-connect/auth", params=params)
    steps: list[str] = []
    otp_tries = 0
    while True:
        if resp.is_redirect:
            location = resp.headers["location"]
            if location.startswith(redirect_uri):
                break
            resp = c.get(location)
            continue
        if resp.status_code != 200:
            raise LoginError(f"HTTP {resp.status_code} from Keycloak (see its LOGIN_ERROR event log)")
        forms = parse_forms(resp.text)
        if "kc-form-login" in forms:
            if "password" in steps:
                raise LoginError("login form shown again: wrong password or user locked (brute force)")
            steps.append("password")
            resp = c.post(forms["kc-form-login"]["action"], data={"username": username, "password": password})
        elif "kc-otp-login-form" in forms:
            if not totp_secret:
                raise LoginError("OTP form shown but no TOTP secret given")
            otp_tries += 1
            if otp_tries > 1:
                raise LoginError("OTP rejected (wrong code, or code reuse if otpPolicyCodeReusable=false)")
            steps.append("otp")
            data = dict(forms["kc-otp-login-form"]["inputs"])  # keeps selectedCredentialId
            data["otp"] = totp(totp_secret)
            resp = c.post(forms["kc-otp-login-form"]["action"], data=data)
        elif "kc-totp-settings-form" in forms:
            raise LoginError("user has no OTP credential; Keycloak asks to enrol one (CONFIGURE_TOTP)")
        else:
            raise LoginError(f"unexpected login page; forms={list(forms)}")

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    if "error" in query:
        raise LoginError(f"authorization error: {query}")
    if query.get("state") != state:
        raise LoginError("state mismatch")
    if query.get("iss") != issuer:  # RFC 9207 iss in the authorization response
        raise LoginError(f"iss mismatch: {query.get('iss')}")

    token_resp = httpx.post(
        f"{issuer}/protocol/openid-connect/token",
        auth=(client_id, client_secret),
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        timeout=30,
    )
    token_resp.raise_for_status()
    tokens = token_resp.json()
    id_claims = jwt_claims(tokens["id_token"])
    if id_claims.get("nonce") != nonce:
        raise LoginError("nonce mismatch")
    return {
        "steps": steps,
        "tokens": tokens,
        "id_token_claims": id_claims,
        "access_token_claims": jwt_claims(tokens["access_token"]),
    }


def _summary(label: str, r: dict) -> str:
    at, it = r["access_token_claims"], r["id_token_claims"]
    keys = ("acr", "amr", "aud", "roles", "npi", "licenses", "facility_privileges", "group")
    return f"{label:38s} steps={r['steps']} id.acr={it.get('acr')} " + " ".join(f"{k}={at.get(k)}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kc", default="http://127.0.0.1:18080", help="Keycloak base URL")
    ap.add_argument("--realm")
    ap.add_argument("--user")
    ap.add_argument("--acr", help="acr_values, e.g. 2")
    args = ap.parse_args()

    if args.realm and args.user:
        totp_secret = EVE_TOTP_BASE32 if args.user == "eve" else None
        r = browser_login(args.kc, args.realm, args.user, totp_secret=totp_secret, acr_values=args.acr)
        print(_summary(f"{args.realm}/{args.user} acr_values={args.acr}", r))
        print(json.dumps(r["access_token_claims"], indent=2))
        return

    kc = args.kc
    print(_summary("hospital-a/ada (password)", browser_login(kc, "hospital-a", "ada")))
    print(_summary("hospital-a/eve acr_values=2", browser_login(kc, "hospital-a", "eve", totp_secret=EVE_TOTP_BASE32, acr_values="2")))
    session = new_client()
    print(_summary("hospital-a/eve (session) no acr", browser_login(kc, "hospital-a", "eve", totp_secret=EVE_TOTP_BASE32, client=session)))
    print(_summary("hospital-a/eve (session) step-up acr 2", browser_login(kc, "hospital-a", "eve", totp_secret=EVE_TOTP_BASE32, acr_values="2", client=session)))
    print(_summary("hospital-b/fay port 40111", browser_login(kc, "hospital-b", "fay", redirect_port=40111)))
    try:
        browser_login(kc, "hospital-a", "ada", acr_values="2")
    except LoginError as e:
        print(f"{'hospital-a/ada acr_values=2':38s} -> {e}")


if __name__ == "__main__":
    main()
