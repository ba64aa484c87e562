#!/usr/bin/env python3
"""Generates the JWT differential cases: fresh keys, a JWKS, and requests carrying tokens minted
with PyJWT (standard tokens) or assembled by hand and signed with PyJWT's algorithms (the odd ones:
padding, crit, huge numbers, wrong types). Each request is sent through real Envoy (jwt_authn as
istiod configures it) and through meshguard; the test compares what comes back.

Usage: jwt_cases.py OUT.json   (prints nothing; the Rust test reads OUT.json)
"""
import base64
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

NOW = int(time.time())
ISS_A = "https://a.test"
ISS_B = "https://b.test"
ISS_C = "https://c.test"
AUD = "api.test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(alg_cls, key, kid, **extra):
    d = json.loads(alg_cls.to_jwk(key.public_key()))
    if kid is not None:
        d["kid"] = kid
    d.update(extra)
    return d


r0 = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # listed first, no kid
r1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
renc = rsa.generate_private_key(public_exponent=65537, key_size=2048)
e1 = ec.generate_private_key(ec.SECP256R1())
stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

JWKS = {
    "keys": [
        jwk(RSAAlgorithm, r0, None, alg="RS256"),
        jwk(RSAAlgorithm, r1, "r1", use="sig", alg="RS256"),
        jwk(RSAAlgorithm, renc, "renc", use="enc"),
        jwk(ECAlgorithm, e1, "e1", alg="ES256"),
    ]
}
SIGNERS = {
    "RS256": (RSAAlgorithm(RSAAlgorithm.SHA256), {"r0": r0, "r1": r1, "renc": renc, "x": stranger}),
    "ES256": (ECAlgorithm(ECAlgorithm.SHA256), {"e1": e1}),
}


def raw(header, payload, key="r1", alg="RS256", header_raw=None, payload_raw=None, sig=None,
        pad=False):
    """A compact JWS assembled by hand (header/payload may be raw bytes), signed unless sig given."""
    h = header_raw if header_raw is not None else json.dumps(header, separators=(",", ":")).encode()
    p = payload_raw if payload_raw is not None else json.dumps(payload, separators=(",", ":")).encode()
    hs, ps = b64(h), b64(p)
    if pad:
        hs += "=" * (-len(hs) % 4)
        ps += "=" * (-len(ps) % 4)
    signing_input = f"{b64(h)}.{b64(p)}".encode()
    if sig is None:
        algo, keys = SIGNERS[alg]
        s = b64(algo.sign(signing_input, keys[key]))
    else:
        s = sig
    if pad:
        s += "=" * (-len(s) % 4)
    return f"{hs}.{ps}.{s}"


DROP = object()


def claims(**kw):
    c = {"iss": ISS_A, "sub": "user-1", "aud": AUD, "exp": NOW + 3600, "iat": NOW - 10}
    for k, v in kw.items():
        if v is DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def pyjwt(payload, key="r1", alg="RS256", headers=None):
    algo_keys = {"RS256": {"r0": r0, "r1": r1, "renc": renc, "x": stranger}, "ES256": {"e1": e1}}
    h = {"kid": key} if key not in ("r0",) else {}
    if headers is not None:
        h = headers
    return jwt.encode(payload, algo_keys[alg][key], algorithm=alg, headers=h)


# --- token variants (name -> token) ------------------------------------------------------------
T = {}
T["valid"] = pyjwt(claims())
T["valid_es256"] = pyjwt(claims(), key="e1", alg="ES256")
T["valid_b"] = pyjwt(claims(iss=ISS_B))
T["valid_c"] = pyjwt(claims(iss=ISS_C))
T["no_kid_first_key"] = pyjwt(claims(), key="r0", headers={})
T["no_kid_second_key"] = pyjwt(claims(), key="r1", headers={})
T["kid_enc_key"] = pyjwt(claims(), key="renc")
T["kid_unknown"] = pyjwt(claims(), key="r1", headers={"kid": "nope"})
T["kid_wrong_key"] = pyjwt(claims(), key="x", headers={"kid": "r1"})
T["no_kid_stranger"] = pyjwt(claims(), key="x", headers={})
T["es256_kid_rsa"] = pyjwt(claims(), key="e1", alg="ES256", headers={"kid": "r1"})
T["expired"] = pyjwt(claims(exp=NOW - 3600))
T["expired_in_skew"] = pyjwt(claims(exp=NOW - 30))
T["exp_zero"] = pyjwt(claims(exp=0))
T["exp_float"] = pyjwt(claims(exp=NOW + 3600.5))
T["exp_string"] = raw({"alg": "RS256", "kid": "r1"}, claims(exp=str(NOW + 3600)))
T["exp_2_64"] = raw({"alg": "RS256", "kid": "r1"}, None,
                    payload_raw=json.dumps(claims(exp=DROP))[:-1].encode() + b',"exp":18446744073709551616}')
T["exp_2_63"] = raw({"alg": "RS256", "kid": "r1"}, claims(exp=2**63))
T["exp_negative"] = raw({"alg": "RS256", "kid": "r1"}, claims(exp=-5))
T["exp_missing"] = pyjwt(claims(exp=DROP))
T["nbf_future"] = pyjwt(claims(nbf=NOW + 3600))
T["nbf_in_skew"] = pyjwt(claims(nbf=NOW + 30))
T["iat_future"] = pyjwt(claims(iat=NOW + 3600))
T["iat_string"] = raw({"alg": "RS256", "kid": "r1"}, claims(iat="yesterday"))
T["nbf_string"] = raw({"alg": "RS256", "kid": "r1"}, claims(nbf="later"))
T["aud_missing"] = pyjwt(claims(aud=DROP))
T["aud_wrong"] = pyjwt(claims(aud="other.test"))
T["aud_list_ok"] = pyjwt(claims(aud=["other.test", AUD]))
T["aud_list_wrong"] = pyjwt(claims(aud=["other.test"]))
T["aud_https"] = pyjwt(claims(aud="https://" + AUD + "/"))
T["aud_number"] = raw({"alg": "RS256", "kid": "r1"}, claims(aud=7))
T["aud_bool"] = raw({"alg": "RS256", "kid": "r1"}, claims(aud=True))
T["aud_list_number"] = raw({"alg": "RS256", "kid": "r1"}, claims(aud=[AUD, 7]))
T["aud_empty_list"] = raw({"alg": "RS256", "kid": "r1"}, claims(aud=[]))
T["iss_wrong"] = pyjwt(claims(iss="https://evil.test"))
T["iss_missing"] = pyjwt(claims(iss=DROP))
T["iss_number"] = raw({"alg": "RS256", "kid": "r1"}, claims(iss=5))
T["sub_number"] = raw({"alg": "RS256", "kid": "r1"}, claims(sub=5))
T["sub_missing"] = pyjwt(claims(sub=DROP))
T["alg_none"] = raw({"alg": "none"}, claims(), sig="")
T["alg_none_sig"] = raw({"alg": "none", "kid": "r1"}, claims(), sig="AAAA")
T["alg_missing"] = raw({"kid": "r1"}, claims())
T["alg_hs256_confusion"] = raw({"alg": "HS256", "kid": "r1"}, claims(),
                               sig=b64(b"\x00" * 32))
T["alg_lowercase"] = raw({"alg": "rs256", "kid": "r1"}, claims())
T["alg_unknown"] = raw({"alg": "XX512", "kid": "r1"}, claims())
T["padded"] = raw({"alg": "RS256", "kid": "r1"}, claims(sub="user-12"), pad=True)
tok = pyjwt(claims())
h, p, s = tok.split(".")
# Flip the unused low bits of the last signature character (non-canonical base64url).
alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
last = alphabet.index(s[-1])
T["sig_noncanonical_bits"] = f"{h}.{p}.{s[:-1]}{alphabet[last ^ 1]}"
T["sig_truncated"] = f"{h}.{p}.{s[:-4]}"
T["sig_empty"] = f"{h}.{p}."
T["two_segments"] = f"{h}.{p}"
T["four_segments"] = f"{h}.{p}.{s}.{s}"
T["payload_tampered"] = f"{h}.{b64(json.dumps(claims(sub='admin')).encode())}.{s}"
T["header_not_json"] = raw(None, claims(), header_raw=b"{nope")
T["payload_not_json"] = raw({"alg": "RS256", "kid": "r1"}, None, payload_raw=b"[1,2")
T["payload_array"] = raw({"alg": "RS256", "kid": "r1"}, None, payload_raw=b"[1,2]")
T["payload_string"] = raw({"alg": "RS256", "kid": "r1"}, None, payload_raw=b'"hi"')
T["header_array"] = raw(None, claims(), header_raw=b"[1]")
T["crit_unknown"] = raw({"alg": "RS256", "kid": "r1", "crit": ["x-weird"], "x-weird": 1}, claims())
T["dup_payload_key"] = raw({"alg": "RS256", "kid": "r1"}, None,
                           payload_raw=json.dumps(claims()).encode()[:-1] + b',"sub":"admin"}')
T["big_token_20k"] = pyjwt(claims(blob="x" * 20000))
T["big_token_12k"] = pyjwt(claims(blob="y" * 12000))
T["garbage_chars"] = "@@@.###.$$$"
T["hashes"] = "###"
T["dot"] = "."
T["dots"] = "..."
T["unicode"] = "é.é.é"
# Claims for output headers.
T["claims_types"] = pyjwt(claims(num=42, neg=-3, flt=1.5, big=12345678901234, admin=True,
                                 groups=["g1", "g2"], obj={"k": "v", "n": 1}, empty="",
                                 uni="h\u00e9llo", nested={"inner": {"leaf": "deep"}},
                                 scope="read write", zero=0, fal=False,
                                 obj5={"a": 1, "b": [2, 3], "c": "x", "d": {"z": 1, "y": 2}, "e": 5.5}))
T["claim_crlf"] = pyjwt(claims(num="a\r\nx-injected: 1"))
T["claim_lf"] = pyjwt(claims(num="a\nb"))
T["claim_nul"] = pyjwt(claims(num="a\u0000b"))
T["claim_tab"] = pyjwt(claims(num="a\tb"))
T["claim_list_mixed"] = pyjwt(claims(groups=["g1", 2, True]))
T["claim_null"] = pyjwt(claims(num=None))

VALID_FOR_A = {"valid", "valid_es256"}


def case(name, headers=(), target="/get", method="GET", scenario="one"):
    return {"name": name, "scenario": scenario, "method": method, "target": target,
            "headers": [list(h) for h in headers]}


CASES = []
# 1. Every token in every way a client writes the default header (scenario "one").
FORMS = {
    "plain": "Bearer {}",
    "two_spaces": "Bearer  {}",
    "tab": "Bearer \t{}",
    "quoted": 'Bearer "{}"',
    "junk_after": "Bearer {} junk",
    "comma_after": "Bearer {},x",
    "prefix_midvalue": "xBearer {}",
    "lowercase_scheme": "bearer {}",
    "no_space": "Bearer{}",
    "semicolon_after": "Bearer {};",
}
for tname, tok in T.items():
    for fname, form in FORMS.items():
        CASES.append(case(f"hdr:{fname}:{tname}", [("authorization", form.format(tok))]))

# 2. Query parameters and duplicates.
for tname in ["valid", "expired", "alg_none", "garbage_chars", "claims_types", "padded"]:
    tok = T[tname]
    CASES.append(case(f"param:{tname}", target=f"/get?access_token={tok}"))
    CASES.append(case(f"param_second:{tname}", target=f"/get?a=1&access_token={tok}&b=2"))
    CASES.append(case(f"param_twice_valid_first:{tname}",
                      target=f"/get?access_token={T['valid']}&access_token={tok}"))
    CASES.append(case(f"param_twice_valid_second:{tname}",
                      target=f"/get?access_token={tok}&access_token={T['valid']}"))
    CASES.append(case(f"param_and_header:{tname}", [("authorization", f"Bearer {T['valid']}")],
                      target=f"/get?access_token={tok}"))
    CASES.append(case(f"header_and_param:{tname}", [("authorization", f"Bearer {tok}")],
                      target=f"/get?access_token={T['valid']}"))
CASES.append(case("param:empty", target="/get?access_token="))
CASES.append(case("param:bare", target="/get?access_token"))
CASES.append(case("param:encoded", target="/get?access_token=" + T["valid"].replace(".", "%2E")))
CASES.append(case("param:plus", target="/get?access_token=+" + T["valid"]))
CASES.append(case("param:fragmentish", target="/get?x=1%26access_token%3D" + T["alg_none"]))
CASES.append(case("param:other_name", target="/get?token=" + T["alg_none"]))

# 3. Two Authorization headers, and other header oddities.
for tname in ["valid", "expired", "alg_none", "garbage_chars"]:
    tok = T[tname]
    CASES.append(case(f"two_auth:bearer_basic:{tname}",
                      [("authorization", f"Bearer {tok}"), ("authorization", "Basic Zm9vOmJhcg==")]))
    CASES.append(case(f"two_auth:basic_bearer:{tname}",
                      [("authorization", "Basic Zm9vOmJhcg=="), ("authorization", f"Bearer {tok}")]))
    CASES.append(case(f"two_auth:bearer_bearer_valid:{tname}",
                      [("authorization", f"Bearer {tok}"), ("authorization", f"Bearer {T['valid']}")]))
    CASES.append(case(f"two_auth:valid_then:{tname}",
                      [("authorization", f"Bearer {T['valid']}"), ("authorization", f"Bearer {tok}")]))
CASES.append(case("auth:empty_bearer", [("authorization", "Bearer ")]))
CASES.append(case("auth:bearer_word", [("authorization", "Bearer")]))
CASES.append(case("auth:basic_only", [("authorization", "Basic Zm9vOmJhcg==")]))
CASES.append(case("auth:empty", [("authorization", "")]))
CASES.append(case("none", []))

# 4. Client-sent copies of the output headers, with and without tokens.
for tname in [None, "valid", "claims_types", "expired"]:
    hs = [("x-jwt-payload", "forged"), ("x-sub", "root"), ("x-num", "1")]
    if tname:
        hs.append(("authorization", f"Bearer {T[tname]}"))
    CASES.append(case(f"forged_output_headers:{tname}", hs))

# 5. Several issuers (scenario "multi": A default locations, B from x-token-b / ?tok_b,
#    C from cookie "session"), tokens in their own and each other's locations.
MULTI_TOKENS = ["valid", "valid_b", "valid_c", "expired", "alg_none", "garbage_chars", "iss_wrong"]
LOCS = {
    "auth": lambda t: ([("authorization", f"Bearer {t}")], ""),
    "xb": lambda t: ([("x-token-b", t)], ""),
    "pa": lambda t: ([], f"access_token={t}"),
    "pb": lambda t: ([], f"tok_b={t}"),
    "ck": lambda t: ([("cookie", f"session={t}")], ""),
}
for t1 in MULTI_TOKENS:
    for l1, f1 in LOCS.items():
        h1, q1 = f1(T[t1])
        CASES.append(case(f"multi:{l1}={t1}", h1, target="/get" + ("?" + q1 if q1 else ""),
                          scenario="multi"))
for t1 in ["valid", "valid_b", "valid_c"]:
    for t2 in ["garbage_chars", "expired", "valid_b", "valid_c", "valid"]:
        for l1, l2 in [("auth", "xb"), ("xb", "auth"), ("auth", "ck"), ("ck", "pb"), ("pa", "xb"),
                       ("xb", "ck")]:
            h1, q1 = LOCS[l1](T[t1])
            h2, q2 = LOCS[l2](T[t2])
            q = "&".join(x for x in [q1, q2] if x)
            CASES.append(case(f"multi:{l1}={t1}+{l2}={t2}", h1 + h2,
                              target="/get" + ("?" + q if q else ""), scenario="multi"))
CASES.append(case("multi:two_cookie_headers",
                  [("cookie", "a=1"), ("cookie", f"session={T['valid_c']}")], scenario="multi"))
CASES.append(case("multi:cookie_twice_first_bad",
                  [("cookie", f"session={T['garbage_chars']}; session={T['valid_c']}")], scenario="multi"))
CASES.append(case("multi:cookie_twice_first_good",
                  [("cookie", f"session={T['valid_c']}; session={T['garbage_chars']}")], scenario="multi"))
CASES.append(case("multi:cookie_quoted", [("cookie", f'session="{T["valid_c"]}"')], scenario="multi"))
CASES.append(case("multi:cookie_empty", [("cookie", "session=")], scenario="multi"))
CASES.append(case("multi:none", [], scenario="multi"))
FORGED = [("x-jwt-a", "forged-a"), ("x-jwt-b", "forged-b"), ("x-jwt-c", "forged-c")]
for l1, t1 in [(None, None), ("auth", "valid"), ("xb", "valid_b"), ("ck", "valid_c"), ("pa", "valid")]:
    h, q = LOCS[l1](T[t1]) if l1 else ([], "")
    CASES.append(case(f"multi:forged_outputs:{l1}={t1}", FORGED + h,
                      target="/get" + ("?" + q if q else ""), scenario="multi"))
# A verified token from a parameter next to other parameters (forward: false removes it).
CASES.append(case("param:among_others", target=f"/get?a=1&access_token={T['valid']}&b=2&access_token=x"))
CASES.append(case("multi:pb_among_others", target=f"/get?a=1&tok_b={T['valid_b']}&b=2", scenario="multi"))

out = {
    "now": NOW,
    "jwks": JWKS,
    "issuers": {"a": ISS_A, "b": ISS_B, "c": ISS_C},
    "audience": AUD,
    "cases": CASES,
}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
