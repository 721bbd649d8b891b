"""Serve, on 127.0.0.1, the union of a JWKS (the proxy's, fetched at every request) and Airflow's own key.

Airflow 3 checks every JWT (REST API callers, task-execution tokens, its own /auth/token tokens)
against the one `[api_auth] trusted_jwks_url`. This puts Airflow's own Ed25519 public key beside the
proxy's keys, so tasks and Airflow's own login keep working while Airflow trusts the proxy.

usage: jwks_merge.py PORT_FILE UPSTREAM_JWKS(url or file) OWN_PRIVATE_KEY_PEM OWN_KID
Binds an ephemeral port on 127.0.0.1 and writes it to PORT_FILE. Any GET path answers the JWKS;
503 while the upstream cannot be fetched (so Airflow retries instead of caching an incomplete set).
"""
import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import serialization
from jwt.algorithms import OKPAlgorithm

port_file, upstream, pem_path, kid = sys.argv[1:5]
own = serialization.load_pem_private_key(open(pem_path, "rb").read(), None).public_key()
own_jwk = json.loads(OKPAlgorithm.to_jwk(own))
own_jwk.update(kid=kid, alg="EdDSA", use="sig")


def upstream_keys():
    if upstream.startswith(("http://", "https://")):
        # No proxies: the upstream is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(upstream, timeout=5) as r:
            return json.load(r)["keys"]
    with open(upstream) as f:
        return json.load(f)["keys"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            keys = [k for k in upstream_keys() if k.get("kid") != kid] + [own_jwk]
            body, status = json.dumps({"keys": keys}).encode(), 200
        except Exception as e:  # noqa: BLE001
            body, status = json.dumps({"error": f"upstream JWKS: {e}"}).encode(), 503
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        sys.stderr.write(f"GET {self.path} -> {status} ({body[:200]!r})\n")
        sys.stderr.flush()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os  # noqa: E402

os.replace(port_file + ".tmp", port_file)
server.serve_forever()
