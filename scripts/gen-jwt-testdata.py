#!/usr/bin/env python3
"""Generates the JWT test data in crates/meshguard-authn/tests/data with an independent
implementation (PyJWT + cryptography), so meshguard's verifier is tested against tokens it did
not make. Re-run to regenerate (keys change each run):

    pip install pyjwt cryptography && python3 scripts/gen-jwt-testdata.py
"""
import base64, json, os, time, sys

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "meshguard-authn", "tests", "data")
ISS = "https://issuer.test"
AUD = "api.test"
FAR = 4102444800  # 2100-01-01
NOW = int(time.time())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwk_pub(key, kid, alg):
    d = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key() if hasattr(key, "public_key") else key))
    d["kid"] = kid
    d["alg"] = alg
    d["use"] = "sig"
    return d


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec256 = ec.generate_private_key(ec.SECP256R1())
ec384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
hs_secret = os.urandom(32)

jwks = {"keys": [
    jwk_pub(rsa_key, "rsa-1", "RS256"),
    jwk_pub(ec256, "ec256-1", "ES256"),
    jwk_pub(ec384, "ec384-1", "ES384"),
    jwk_pub(ed, "ed-1", "EdDSA"),
]}
for k in jwks["keys"]:
    if k["kid"] == "rsa-1":
        del k["alg"]  # one RSA key serves RS* and PS*
jwks_hs = {"keys": [{"kty": "oct", "kid": "hs-1", "k": b64(hs_secret), "alg": "HS256"}]}
jwks_other = {"keys": [jwk_pub(rsa_other, "rsa-1", "RS256")]}
del jwks_other["keys"][0]["alg"]

base = {"iss": ISS, "sub": "user-1", "aud": AUD, "iat": NOW - 10, "exp": FAR,
        "scope": "read write", "groups": ["admins", "dev"], "role": "admin",
        "nested": {"team": {"name": "core"}}, "azp": "web-client", "email_verified": True}

tokens = {}
for alg, key, kid in [("RS256", rsa_key, "rsa-1"), ("RS384", rsa_key, "rsa-1"), ("RS512", rsa_key, "rsa-1"),
                      ("PS256", rsa_key, "rsa-1"), ("PS384", rsa_key, "rsa-1"), ("PS512", rsa_key, "rsa-1"),
                      ("ES256", ec256, "ec256-1"), ("ES384", ec384, "ec384-1"), ("EdDSA", ed, "ed-1")]:
    tokens[alg] = jwt.encode(base, key, algorithm=alg, headers={"kid": kid})
tokens["HS256"] = jwt.encode(base, hs_secret, algorithm="HS256", headers={"kid": "hs-1"})
tokens["RS256_no_kid"] = jwt.encode(base, rsa_key, algorithm="RS256")
tokens["expired"] = jwt.encode({**base, "exp": NOW - 3600}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["not_yet_valid"] = jwt.encode({**base, "nbf": FAR - 10}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["issued_in_future"] = jwt.encode({**base, "iat": FAR - 10}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["wrong_iss"] = jwt.encode({**base, "iss": "https://evil.test"}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["wrong_aud"] = jwt.encode({**base, "aud": "other.test"}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["aud_list"] = jwt.encode({**base, "aud": ["other.test", AUD]}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["unknown_kid"] = jwt.encode(base, rsa_key, algorithm="RS256", headers={"kid": "nope"})
tokens["other_key_same_kid"] = jwt.encode(base, rsa_other, algorithm="RS256", headers={"kid": "rsa-1"})
tokens["no_exp"] = jwt.encode({k: v for k, v in base.items() if k != "exp"}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

# alg none: header {"alg":"none"}, empty signature.
h = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
p = b64(json.dumps(base).encode())
tokens["alg_none"] = f"{h}.{p}."
# Key confusion: HS256 keyed with the RSA public key's PEM (what a naive verifier would use).
pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
import hmac, hashlib
h = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
sig = hmac.new(pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
tokens["key_confusion_hs256_with_rsa_pem"] = f"{h}.{p}.{b64(sig)}"


def sign_rs256_raw(header_json, payload_json):
    h = b64(header_json.encode()); p = b64(payload_json.encode())
    s = rsa_key.sign(f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{h}.{p}.{b64(s)}"


# Validly signed, but hostile structure.
tokens["duplicate_header_key"] = sign_rs256_raw('{"alg":"RS256","kid":"rsa-1","alg":"none"}', json.dumps(base))
tokens["duplicate_payload_key"] = sign_rs256_raw('{"alg":"RS256","kid":"rsa-1"}', json.dumps(base)[:-1] + ', "sub": "admin"}')
tokens["crit_unknown"] = sign_rs256_raw('{"alg":"RS256","kid":"rsa-1","crit":["exp-ext"],"exp-ext":1}', json.dumps(base))
tokens["payload_not_object"] = sign_rs256_raw('{"alg":"RS256","kid":"rsa-1"}', '["not","an","object"]')

good = tokens["RS256"]
hh, pp, ss = good.split(".")
tokens["truncated_two_segments"] = f"{hh}.{pp}"
tokens["truncated_signature"] = f"{hh}.{pp}.{ss[:20]}"
tokens["non_base64"] = f"{hh}.{pp[:10]}*!{pp[12:]}.{ss}"
tokens["padded_base64"] = f"{hh}.{pp}==.{ss}"
tokens["tampered_payload"] = f"{hh}.{b64(json.dumps({**base, 'role': 'root'}).encode())}.{ss}"

os.makedirs(OUT, exist_ok=True)
json.dump(jwks, open(os.path.join(OUT, "jwks.json"), "w"), indent=1)
json.dump(jwks_hs, open(os.path.join(OUT, "jwks-hs.json"), "w"), indent=1)
json.dump(jwks_other, open(os.path.join(OUT, "jwks-other.json"), "w"), indent=1)
json.dump({"generated_by": f"PyJWT {jwt.__version__}, cryptography", "issuer": ISS, "audience": AUD,
           "generated_at": NOW, "tokens": tokens}, open(os.path.join(OUT, "tokens.json"), "w"), indent=1)
open(os.path.join(OUT, "rsa-1.pem"), "wb").write(rsa_key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
print(f"wrote {len(tokens)} tokens to {OUT}", file=sys.stderr)
