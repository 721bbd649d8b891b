#!/usr/bin/env python3
"""Mint an ES256 key pair and N bearer tokens for benches/load-bearer.sh.

    python3 benches/load/bearer/mint.py --out DIR --count 350000

Writes into DIR:
  jwks.json                   the public key as a JWKS (kid "bench-es256"), served at <issuer>/jwks
  openid-configuration.json   the discovery document, served at <issuer>/.well-known/openid-configuration
  pubkey.pem                  the public key (SubjectPublicKeyInfo PEM), for HAProxy's jwt_verify
  tokens.txt                  N tokens, one per line (read by rotate.lua with io.lines)
  bad-tokens.txt              "<case> <token>" lines that must all be refused (401): expired,
                              wrong-aud, wrong-iss, bad-sig, other-key, alg-hs256

Every token: header {"alg":"ES256","kid":"bench-es256","typ":"JWT"}, claims iss, aud, sub
"bench-<i>", groups ["bench"], iat now, exp now+3600 (all tokens distinct: sub differs).

Uses PyPI pyjwt + cryptography (installed with pip into this Python only if the imports fail).
Minting is parallel (one process per core): the claims of token i are built by hand and signed
with pyjwt's ES256 algorithm object (raw r||s signature, as JWS wants), which skips jwt.encode's
per-call header handling; the first token is checked with jwt.decode against the public key.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time


def _import():
    global jwt, ECAlgorithm, ec, serialization
    import jwt  # noqa: F401  (pyjwt)
    from jwt.algorithms import ECAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    # jwt.algorithms lacks ECAlgorithm when cryptography is missing
    return jwt, ECAlgorithm, ec, serialization


try:
    _import()
except ImportError:
    print("mint.py: installing pyjwt and cryptography with pip", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "pyjwt", "cryptography"])
    _import()

KID = "bench-es256"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(n: int, size: int) -> str:
    return b64url(n.to_bytes(size, "big"))


# --- worker side (multiprocessing): each worker signs a contiguous slice of indices.
_KEY = None
_ALG = None
_HEAD = None
_CLAIMS = None


def _worker_init(pem: bytes, head: str, claims_prefix: str, claims_suffix: str):
    global _KEY, _ALG, _HEAD, _CLAIMS
    _ALG = ECAlgorithm(ECAlgorithm.SHA256)
    _KEY = _ALG.prepare_key(pem)
    _HEAD = head
    _CLAIMS = (claims_prefix, claims_suffix)


def _mint_range(bounds):
    start, end = bounds
    prefix, suffix = _CLAIMS
    out = []
    for i in range(start, end):
        payload = f"{prefix}{i}{suffix}".encode()
        signing_input = f"{_HEAD}.{b64url(payload)}"
        sig = _ALG.sign(signing_input.encode("ascii"), _KEY)
        out.append(f"{signing_input}.{b64url(sig)}")
    return "\n".join(out) + "\n" if out else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--count", type=int, default=10000, help="number of tokens [10000]")
    ap.add_argument("--issuer", default="http://127.0.0.1:18000")
    ap.add_argument("--audience", default="portcullis-bench")
    ap.add_argument("--ttl", type=int, default=3600, help="token lifetime in seconds [3600]")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="signing processes [nproc]")
    args = ap.parse_args()

    t0 = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    nums = pub.public_numbers()
    jwks = {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_uint(nums.x, 32),
                "y": b64url_uint(nums.y, 32),
                "kid": KID,
                "use": "sig",
                "alg": "ES256",
            }
        ]
    }
    issuer = args.issuer.rstrip("/")
    discovery = {
        "issuer": args.issuer,
        "jwks_uri": f"{issuer}/jwks",
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
    }
    with open(os.path.join(args.out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    with open(os.path.join(args.out, "openid-configuration.json"), "w") as f:
        json.dump(discovery, f)
    pub_pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(os.path.join(args.out, "pubkey.pem"), "wb") as f:
        f.write(pub_pem)
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    now = int(time.time())
    head = b64url(json.dumps({"alg": "ES256", "kid": KID, "typ": "JWT"}, separators=(",", ":")).encode())
    # Claims JSON with the subject index spliced in: {"iss":..,"aud":..,"sub":"bench-<i>",..}
    prefix = "{" + f'"iss":{json.dumps(args.issuer)},"aud":{json.dumps(args.audience)},"sub":"bench-'
    # Every token is in group "bench", which the bench policy (benches/load/bearer/policy) grants.
    suffix = f'","groups":["bench"],"iat":{now},"exp":{now + args.ttl}' + "}"

    n = args.count
    jobs = max(1, min(args.jobs, n // 2000 or 1))
    chunk = 20000
    ranges = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    path = os.path.join(args.out, "tokens.txt")
    with open(path, "w") as f:
        if jobs == 1:
            _worker_init(priv_pem, head, prefix, suffix)
            for r in ranges:
                f.write(_mint_range(r))
        else:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(jobs, _worker_init, (priv_pem, head, prefix, suffix)) as pool:
                for text in pool.imap(_mint_range, ranges):  # in order
                    f.write(text)

    # Tokens that a correct verifier refuses, one per way of being wrong.
    good = {"iss": args.issuer, "aud": args.audience, "sub": "bench-bad", "iat": now, "exp": now + args.ttl}
    hdr = {"kid": KID, "typ": "JWT"}
    other = ec.generate_private_key(ec.SECP256R1())
    valid = jwt.encode(good, key, algorithm="ES256", headers=hdr)
    h, p, s = valid.split(".")
    mid = len(s) // 2
    s_bad = s[:mid] + ("A" if s[mid] != "A" else "B") + s[mid + 1 :]
    bad = [
        ("expired", jwt.encode({**good, "iat": now - 7200, "exp": now - 3600}, key, algorithm="ES256", headers=hdr)),
        ("wrong-aud", jwt.encode({**good, "aud": "someone-else"}, key, algorithm="ES256", headers=hdr)),
        ("wrong-iss", jwt.encode({**good, "iss": "http://127.0.0.1:18999"}, key, algorithm="ES256", headers=hdr)),
        ("bad-sig", f"{h}.{p}.{s_bad}"),
        ("other-key", jwt.encode(good, other, algorithm="ES256", headers=hdr)),
        ("alg-hs256", jwt.encode(good, b"k" * 32, algorithm="HS256", headers=hdr)),
    ]
    with open(os.path.join(args.out, "bad-tokens.txt"), "w") as f:
        for name, tok in bad:
            f.write(f"{name} {tok}\n")

    # Self-check: the first and last tokens verify with pyjwt against the public key.
    with open(path) as f:
        first = f.readline().strip()
    last = first
    if n > 1:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            last = f.read().decode().strip().rsplit("\n", 1)[-1]
    for tok, i in ((first, 0), (last, n - 1)):
        claims = jwt.decode(tok, pub_pem, algorithms=["ES256"], audience=args.audience, issuer=args.issuer)
        assert claims["sub"] == f"bench-{i}", claims
        assert jwt.get_unverified_header(tok)["kid"] == KID

    print(
        f"mint.py: {n} ES256 tokens (kid {KID}, exp {now + args.ttl}) in {path} "
        f"({time.monotonic() - t0:.1f}s, {jobs} process(es))",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
