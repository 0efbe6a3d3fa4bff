"""JWT authentication of CRM frontend users (REST facade and Socket.IO).

The CRM issues the tokens; the bridge only verifies them. Algorithms come from an
allow-list that never contains ``none``; ``exp`` is required; ``aud``/``iss`` are checked
when configured. The key is picked by the token's algorithm family, so a public key can
never be used as an HMAC secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from ..config import Config
from ..context import CONFIG, USERS
from ..db.crm_user import CrmUser
from ..errors import Forbidden, MissingToken, UnknownToken

log = logging.getLogger("bridge.api.auth")

_SYMMETRIC = ("HS256", "HS384", "HS512")
VERIFIED_TOKENS = 10_000
USER_NOT_SYNCED = "M_USER_NOT_SYNCED"


@dataclass
class JwtVerifier:
    algorithms: list[str]
    secret: str | None
    public_key: Any
    jwks: jwt.PyJWKSet | None
    audience: str | None
    issuer: str | None
    user_claim: str
    leeway: float
    # Tokens already verified (by digest): a frontend sends the same token with every
    # request, and checking a signature costs more than the rest of a cached lookup. Only
    # valid tokens enter; each hit checks the expiry again.
    _verified: OrderedDict[bytes, tuple[str, float]] = field(
        default_factory=OrderedDict, repr=False
    )

    @classmethod
    def from_config(cls, config: Config) -> JwtVerifier:
        algorithms = [
            str(a) for a in config.get("auth.algorithms") or [] if str(a).lower() != "none"
        ]
        public_key = None
        jwks = None
        if path := config.get("auth.public_key_file"):
            public_key = Path(path).read_text("utf-8")
        if path := config.get("auth.jwks_file"):
            jwks = jwt.PyJWKSet.from_dict(json.loads(Path(path).read_text("utf-8")))
        return cls(
            algorithms=algorithms,
            secret=config.get("auth.secret") or None,
            public_key=public_key,
            jwks=jwks,
            audience=config.get("auth.audience") or None,
            issuer=config.get("auth.issuer") or None,
            user_claim=config.get("auth.user_claim") or "sub",
            leeway=float(config.get("auth.leeway") or 0),
        )

    def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise UnknownToken("The token's signing algorithm is not accepted")
        if alg in _SYMMETRIC:
            if not self.secret:
                raise UnknownToken("The token's signing algorithm is not accepted")
            return self.secret
        if self.jwks is not None:
            kid = header.get("kid")
            keys = [k for k in self.jwks.keys if kid is None or k.key_id == kid]
            if kid is None and len(self.jwks.keys) != 1:
                raise UnknownToken("The token names no key id (kid)")
            if not keys:
                raise UnknownToken("The token's key id is unknown")
            return keys[0].key
        if self.public_key is not None:
            return self.public_key
        raise UnknownToken("The token's signing algorithm is not accepted")

    def verify(self, token: str) -> str:
        """The CRM user id the token speaks for, or :class:`UnknownToken`."""
        return self.verify_session(token)[0]

    def verify_session(self, token: str) -> tuple[str, float]:
        """The CRM user id, and when (epoch seconds) the token stops being accepted."""
        digest = hashlib.sha256(token.encode()).digest()
        if (known := self._verified.get(digest)) is not None:
            if time.time() < known[1]:
                return known
            del self._verified[digest]
            raise UnknownToken("The access token has expired")
        session = self._verify(token)
        self._verified[digest] = session
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return session

    def _verify(self, token: str) -> tuple[str, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise UnknownToken("The access token is malformed") from e
        key = self._key_for(header)
        options = {
            "require": ["exp"],
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
            # Our own check below: CRM ids are often numbers, which pyjwt refuses in sub.
            "verify_sub": False,
        }
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError as e:
            raise UnknownToken("The access token has expired") from e
        except jwt.InvalidAudienceError as e:
            raise UnknownToken("The access token is meant for another audience") from e
        except jwt.InvalidIssuerError as e:
            raise UnknownToken("The access token comes from an unknown issuer") from e
        except jwt.MissingRequiredClaimError as e:
            raise UnknownToken(f"The access token lacks the '{e.claim}' claim") from e
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise UnknownToken("The access token is not valid") from e
        subject = claims.get(self.user_claim)
        if isinstance(subject, bool) or not isinstance(subject, str | int) or subject == "":
            raise UnknownToken(f"The access token lacks the '{self.user_claim}' claim")
        return str(subject), float(claims["exp"]) + self.leeway

    def mint(self, crm_user_id: str, ttl: int = 86400) -> str:
        """A development token signed with the HS256 secret."""
        if not self.secret or "HS256" not in self.algorithms:
            raise ValueError("minting needs HS256 in auth.algorithms and auth.secret set")
        now = int(time.time())
        claims: dict[str, Any] = {self.user_claim: crm_user_id, "iat": now, "exp": now + ttl}
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.secret, algorithm="HS256")


VERIFIER = web.AppKey("jwt_verifier", JwtVerifier)


def verifier(app: web.Application) -> JwtVerifier:
    found = app.get(VERIFIER)
    if found is None:
        found = JwtVerifier.from_config(app[CONFIG])
        app[VERIFIER] = found
    return found


async def authenticate(app: web.Application, token: str | None) -> CrmUser:
    """The active CRM user behind a bearer token: 401 without a valid one, 403 if the
    directory does not know its user or deactivated them."""
    if not token:
        raise MissingToken()
    return await user_for(app, verifier(app).verify(token))


# Active users seen in the last second: a burst of requests costs one lookup, and a
# deactivation still takes effect within USER_TTL.
USER_TTL = 1.0
SEEN_USERS = web.AppKey("auth_seen_users", dict)


async def user_for(app: web.Application, crm_user_id: str, *, fresh: bool = False) -> CrmUser:
    """The active CRM user a verified token names; ``fresh`` skips the one-second cache
    (a socket lives long: it is authorised from the database itself)."""
    seen: dict[str, tuple[float, CrmUser]] = app.get(SEEN_USERS, {})
    hit = None if fresh else seen.get(crm_user_id)
    if hit and time.monotonic() - hit[0] < USER_TTL:
        return hit[1]
    user = await app[USERS].get(crm_user_id)
    if user is not None and user.active:
        if len(seen) > 50000:
            seen.clear()
        seen[crm_user_id] = (time.monotonic(), user)
    else:
        seen.pop(crm_user_id, None)
    if user is None:
        # 403, not 401: the token is good, and the CRM's frontend logs a person out of the
        # whole CRM on any 401 (the directory may simply not have synced them yet).
        raise Forbidden("Your account is not in the chat directory yet", errcode=USER_NOT_SYNCED)
    if not user.active:
        raise Forbidden("This account is deactivated", errcode="M_USER_DEACTIVATED")
    return user


def bearer_token(request: web.Request, allow_query: bool = False) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return request.query.get("token") or request.query.get("access_token") or None
    return None
