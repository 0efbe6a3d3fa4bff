"""JWT verification: allow-listed algorithms, exp required, aud/iss, keys and JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.api.auth import JwtVerifier
from bridge.config import Config
from bridge.errors import UnknownToken
from tests.api_support import api_for, crm_user

SECRET = "s3cret-for-tests-0123456789abcdef0123"


def config(**values: object) -> Config:
    cfg = Config.load(None, environ={})
    cfg.set("auth.secret", SECRET)
    for dotted, value in values.items():
        cfg.set(dotted.replace("__", "."), value)
    return cfg


def claims(**extra: object) -> dict:
    return {"sub": "42", "exp": int(time.time()) + 600, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(payload: dict) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def test_hs256_accepts_a_good_token_and_reads_the_configured_claim() -> None:
    verifier = JwtVerifier.from_config(config())
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")) == "42"
    custom = JwtVerifier.from_config(config(auth__user_claim="userId"))
    token = jwt.encode({"userId": 7, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert custom.verify(token) == "7"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"), "expired"),
        (jwt.encode({"sub": "42"}, SECRET, algorithm="HS256"), "'exp'"),
        (jwt.encode(claims(), SECRET * 2, algorithm="HS512"), "algorithm"),
        (jwt.encode(claims(), "another secret of enough length!!", algorithm="HS256"), "not valid"),
        (unsigned(claims()), "algorithm"),
        ("not.a.jwt", "malformed"),
        ("", "malformed"),
        (jwt.encode({"exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"), "'sub'"),
        (jwt.encode(claims(sub=True), SECRET, algorithm="HS256"), "'sub'"),
    ],
)
def test_bad_tokens_are_refused(token: str, why: str) -> None:
    with pytest.raises(UnknownToken) as caught:
        JwtVerifier.from_config(config()).verify(token)
    assert why in caught.value.message


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch) -> None:
    verifier = JwtVerifier.from_config(config())
    token = jwt.encode(claims(exp=int(time.time()) + 5), SECRET, algorithm="HS256")
    decode, checks = jwt.decode, []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: checks.append(1) or decode(*a, **k))
    assert verifier.verify(token) == "42"
    assert verifier.verify(token) == "42"
    assert len(checks) == 1  # the second call needed no signature check
    now, later = time.time, time.time() + 6 + verifier.leeway
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(UnknownToken) as caught:
        verifier.verify(token)
    assert "expired" in caught.value.message and len(checks) == 1
    # Refused once expired, it is forgotten: a later call checks the signature again.
    monkeypatch.setattr(time, "time", now)
    assert verifier.verify(token) == "42"
    assert len(checks) == 2
    # A refused token is never remembered.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(UnknownToken):
            verifier.verify(forged)
    assert len(checks) == 4


def test_tampered_payload_is_refused() -> None:
    header, _payload, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = b64(json.dumps(claims(sub="1")).encode())
    with pytest.raises(UnknownToken):
        JwtVerifier.from_config(config()).verify(f"{header}.{forged}.{signature}")


def test_leeway_allows_small_clock_skew() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert JwtVerifier.from_config(config(auth__leeway=30)).verify(token) == "42"
    with pytest.raises(UnknownToken):
        JwtVerifier.from_config(config(auth__leeway=0)).verify(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = JwtVerifier.from_config(config(auth__audience="crm-chat", auth__issuer="crm"))
    good = jwt.encode(claims(aud="crm-chat", iss="crm"), SECRET, algorithm="HS256")
    assert verifier.verify(good) == "42"
    for bad, why in (
        (claims(aud="other", iss="crm"), "audience"),
        (claims(iss="crm"), "'aud'"),
        (claims(aud="crm-chat", iss="evil"), "issuer"),
        (claims(aud="crm-chat"), "'iss'"),
    ):
        with pytest.raises(UnknownToken) as caught:
            verifier.verify(jwt.encode(bad, SECRET, algorithm="HS256"))
        assert why in caught.value.message


def _pem(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_rs256_public_key_and_no_hmac_confusion(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "public.pem"
    pem.write_text(_pem(private))
    verifier = JwtVerifier.from_config(
        config(auth__algorithms=["RS256"], auth__public_key_file=str(pem))
    )
    assert verifier.verify(jwt.encode(claims(), private, algorithm="RS256")) == "42"
    # The classic attack: HMAC-sign with the public key as the secret.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(pem.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    with pytest.raises(UnknownToken):
        verifier.verify(forged)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(UnknownToken):
        verifier.verify(jwt.encode(claims(), other, algorithm="RS256"))


def test_es256_from_a_jwks_file(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    verifier = JwtVerifier.from_config(
        config(auth__algorithms=["ES256"], auth__jwks_file=str(jwks))
    )
    token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})
    assert verifier.verify(token) == "42"
    with pytest.raises(UnknownToken) as caught:
        verifier.verify(jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k2"}))
    assert "key id" in caught.value.message


def test_none_can_never_be_allowed() -> None:
    verifier = JwtVerifier.from_config(config(auth__algorithms=["none", "HS256"]))
    assert verifier.algorithms == ["HS256"]
    with pytest.raises(UnknownToken):
        verifier.verify(unsigned(claims()))


def test_token_command_mints_a_token_the_bridge_accepts(tmp_path: Path) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"auth:\n  secret: {SECRET}\n  audience: crm-chat\n"
        "appservice:\n  as_token: a\n  hs_token: b\nadmin_api:\n  token: c\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "-c", str(config_path), "token", "u-7", "--ttl", "120"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = out.stdout.strip()
    assert JwtVerifier.from_config(config(auth__audience="crm-chat")).verify(token) == "u-7"
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience="crm-chat")
    assert 100 <= decoded["exp"] - time.time() <= 121
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.integration
async def test_http_answers_for_bad_tokens(stack) -> None:
    app = stack.app
    user = await crm_user(app)
    good = jwt.encode(claims(sub=user.crm_user_id), stack.config["auth.secret"], "HS256")
    cases = {
        None: (401, "M_MISSING_TOKEN"),
        "Bearer": (401, "M_MISSING_TOKEN"),
        "Basic abc": (401, "M_MISSING_TOKEN"),
        f"Bearer {unsigned(claims(sub=user.crm_user_id))}": (401, "M_UNKNOWN_TOKEN"),
        f"Bearer {good[:-3]}xyz": (401, "M_UNKNOWN_TOKEN"),
        "Bearer "
        + jwt.encode(claims(sub=user.crm_user_id, exp=1), stack.config["auth.secret"], "HS256"): (
            401,
            "M_UNKNOWN_TOKEN",
        ),
        f"Bearer {good}": (200, None),
    }
    async with api_for(app, stack.bridge_url, None) as api:
        for header, (status, errcode) in cases.items():
            headers = {"Authorization": header} if header else {}
            got, body, _ = await api.get("/api/auth/me", headers=headers)
            assert got == status, (header, body)
            if errcode:
                assert body["errcode"] == errcode and body["message"]
            else:
                assert body["_id"] == user.crm_user_id and body["email"] == user.email
