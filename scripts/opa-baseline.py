#!/usr/bin/env python3
# Set-up (opa-golib-python-bindings declares Python >= 3.14, but its wheel is py3-none ctypes):
#   python3 -m venv /tmp/opavenv
#   /tmp/opavenv/bin/pip download --no-deps --python-version 3.14 --only-binary=:all: opa-golib-python-bindings -d /tmp/opawhl
#   /tmp/opavenv/bin/pip install --ignore-requires-python /tmp/opawhl/*.whl pyyaml
#   /tmp/opavenv/bin/python scripts/opa-baseline.py
"""Baseline: real OPA (Go, embedded via opa-golib-python-bindings) evaluating
data.envoy.authz.allow from /work/main/examples/extauth/opa-envoy.yaml.

Two call paths are timed, each for the real policy and for a trivial policy
(`package t\nallow := true`) with the same input:
  * "api":  OpaEngine.eval_document(path, input_dict)  -- full Python binding
            (json.dumps of input + ctypes + Go eval + json.loads of result)
  * "raw":  lib.OpaEvalDocument(handle, path, input_bytes, 0, 0) via ctypes with
            the input pre-serialized once; the result envelope is copied and
            freed but not parsed. Go side still parses input JSON, evaluates the
            cached PreparedEvalQuery, and json.Marshal's the result set.
Go eval cost estimate = policy - trivial (same path).
"""
import ctypes
import json
import platform
import statistics
import sys
import time
from importlib.metadata import version

import yaml
from opa_bindings import OpaEngine

N = 2000
WARMUP = 300
RUNS = 3
import pathlib
ROOT = pathlib.Path(__file__).resolve().parent.parent
YAML_PATH = str(ROOT / "examples/extauth/opa-envoy.yaml")
TOKENS_PATH = str(ROOT / "crates/meshguard-authn/tests/data/tokens.json")


def load_policy():
    with open(YAML_PATH) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "orders-policy":
                return doc["data"]["policy.rego"], json.loads(doc["data"]["data.json"])
    raise SystemExit("orders-policy ConfigMap not found")


def make_input(token, body):
    return {
        "attributes": {"request": {"http": {
            "method": "POST", "path": "/post", "host": "shop.test",
            "headers": {"authorization": "Bearer " + token,
                        "content-type": "application/json"}}}},
        "parsed_path": ["post"],
        "parsed_query": {},
        "parsed_body": body,
        "truncated_body": False,
        "version": {"ext_authz": "v3", "encoding": "protojson"},
    }


def opa_version():
    # Parse the Go build info (`go version -m` text) embedded in the c-shared library.
    import re
    import opa_bindings._native as nat
    blob = nat._LIB_PATH.read_bytes()
    m = re.search(rb"dep\tgithub\.com/open-policy-agent/opa\t(v[0-9][^\t\n]*)", blob)
    g = re.search(rb"go1\.[0-9]+(?:\.[0-9]+)?", blob)
    return {"opa": m.group(1).decode() if m else "?", "go": g.group(0).decode() if g else "?"}


def time_loop(fn, n):
    samples = [0] * n
    pc = time.perf_counter_ns
    for i in range(n):
        t0 = pc()
        fn()
        samples[i] = pc() - t0
    return statistics.median(samples) / 1000, statistics.fmean(samples) / 1000


def main():
    policy, data = load_policy()
    token = json.load(open(TOKENS_PATH))["tokens"]["RS256"]
    inp_ok = make_input(token, {"item": "book", "quantity": 2})
    inp_bad = make_input(token, {"item": "book", "quantity": 0})

    print(f"python {platform.python_version()}  opa-golib-python-bindings {version('opa-golib-python-bindings')}"
          f"  embedded: {opa_version()}")
    print(f"N={N} warmup={WARMUP} runs={RUNS}; times in microseconds per evaluation")

    eng = OpaEngine()
    eng.add_policy("policy.rego", policy)
    eng.add_data(data)
    triv = OpaEngine()
    triv.add_policy("t.rego", "package t\nallow := true\n")

    r_ok = eng.eval_document("envoy.authz.allow", inp_ok)
    r_bad = eng.eval_document("envoy.authz.allow", inp_bad)
    r_triv = triv.eval_document("t.allow", inp_ok)
    print(f"check: quantity=2 -> {r_ok!r}  quantity=0 -> {r_bad!r}  trivial -> {r_triv!r}")
    assert r_ok is True and r_bad is False and r_triv is True

    lib = eng._lib
    inp_bytes = json.dumps(inp_ok, ensure_ascii=False).encode()

    def raw_call(handle, path):
        p = path.encode()
        f = lib.OpaEvalDocument
        free = lib.OpaFreeString
        sa = ctypes.string_at

        def call():
            ptr = f(handle, p, inp_bytes, 0, 0)
            sa(ptr)
            free(ptr)
        return call

    # sanity check the raw path returns the same result
    ptr = lib.OpaEvalDocument(eng._handle, b"envoy.authz.allow", inp_bytes, 0, 0)
    env = json.loads(ctypes.string_at(ptr)); lib.OpaFreeString(ptr)
    assert env["result"][0]["expressions"][0]["value"] is True, env

    cases = [
        ("api  policy ", lambda: eng.eval_document("envoy.authz.allow", inp_ok)),
        ("api  trivial", lambda: triv.eval_document("t.allow", inp_ok)),
        ("raw  policy ", raw_call(eng._handle, "envoy.authz.allow")),
        ("raw  trivial", raw_call(triv._handle, "t.allow")),
    ]
    results = {name: [] for name, _ in cases}
    for run in range(1, RUNS + 1):
        for name, fn in cases:
            for _ in range(WARMUP):
                fn()
            med, mean = time_loop(fn, N)
            results[name].append((med, mean))
            print(f"run {run}  {name}: median {med:8.1f} us  mean {mean:8.1f} us")
    print("summary (median of the 3 run-medians / mean of run-means):")
    summ = {}
    for name, rs in results.items():
        summ[name] = (statistics.median(r[0] for r in rs), statistics.fmean(r[1] for r in rs))
        print(f"  {name}: median {summ[name][0]:8.1f} us  mean {summ[name][1]:8.1f} us"
              f"   runs(median)={[round(r[0], 1) for r in rs]} runs(mean)={[round(r[1], 1) for r in rs]}")
    for path in ("api", "raw"):
        p, t = summ[f"{path}  policy "], summ[f"{path}  trivial"]
        print(f"  est. policy eval cost ({path}: policy - trivial): median {p[0]-t[0]:.1f} us  mean {p[1]-t[1]:.1f} us")
    eng.close(); triv.close()


if __name__ == "__main__":
    main()
