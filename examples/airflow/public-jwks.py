"""Print the public JWKS of Airflow's own signing key, for Portcullis' `[routes.assertion] upstream_jwks`.

Airflow 3 checks every JWT it receives against one `[api_auth] trusted_jwks_url`: the callers'
(the proxy's assertions) and the task-execution tokens it signs itself with
`[api_auth] jwt_private_key_path`. Point that URL at the route's JWKS on the proxy
(`<tokens.issuer>/.well-known/jwks/<route name>.json`), which serves the proxy's keys and the
public keys in this file; Airflow's key then reaches nobody else.

usage: python public-jwks.py PRIVATE_KEY.pem KID > airflow-jwks.json

KID must be Airflow's `[api_auth] jwt_kid`. Run it with Airflow's own Python (it has PyJWT and
cryptography). Ed25519 (EdDSA), EC P-256/P-384/P-521 (ES256/384/512) and RSA (RS256) keys.
"""
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

if len(sys.argv) != 3:
    sys.exit(__doc__)
path, kid = sys.argv[1:3]
with open(path, "rb") as f:
    public = serialization.load_pem_private_key(f.read(), None).public_key()
if isinstance(public, ed25519.Ed25519PublicKey):
    jwk, alg = json.loads(OKPAlgorithm.to_jwk(public)), "EdDSA"
elif isinstance(public, ec.EllipticCurvePublicKey):
    bits = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 512}[public.curve.name]
    jwk, alg = json.loads(ECAlgorithm.to_jwk(public)), f"ES{bits}"
elif isinstance(public, rsa.RSAPublicKey):
    jwk, alg = json.loads(RSAAlgorithm.to_jwk(public)), "RS256"
else:
    sys.exit(f"{path}: an Ed25519, EC or RSA private key is needed")
jwk.update(kid=kid, alg=alg, use="sig")
print(json.dumps({"keys": [jwk]}, indent=2))
