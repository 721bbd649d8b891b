#!/usr/bin/env bash
# The quickstart: the demo upstream on 127.0.0.1:8081, Portcullis on 127.0.0.1:8080 in front of
# it (examples/quickstart.toml), three requests to show what passes and what is refused, then the
# proxy keeps running until Ctrl-C. Audit events are printed as JSON lines on stdout.
#
#   ./examples/quickstart.sh           build (release), run, show, keep serving
#   ./examples/quickstart.sh --check   run, show, verify the three answers, stop
#
# PORTCULLIS=path/to/binary skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PORTCULLIS:-}
if [ -z "$BIN" ]; then
  cargo build --release --bin portcullis
  BIN=target/release/portcullis
fi
CONFIG=examples/quickstart.toml
PROXY=http://127.0.0.1:8080

"$BIN" check-config --config "$CONFIG"
"$BIN" demo-upstream --listen 127.0.0.1:8081 &
UPSTREAM_PID=$!
"$BIN" serve --config "$CONFIG" &
PROXY_PID=$!
trap 'kill $UPSTREAM_PID $PROXY_PID 2>/dev/null || true; wait 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if curl -fsS http://127.0.0.1:9090/readyz >/dev/null 2>&1; then break; fi
  sleep 0.1
done

show() {
  local title=$1; shift
  printf '\n== %s\n$ curl %s\n' "$title" "$*" >&2
  curl -sS -o /dev/stderr -w '%{http_code}' "$@"
}

public=$(show "a public route: forwarded to the demo upstream, which echoes what it received" \
  -H 'Host: demo.localhost' "$PROXY/public/hello?name=world")
protected=$(show "a protected route: refused with 401 (no identity provider is configured, so the proxy fails closed)" \
  -H 'Host: demo.localhost' "$PROXY/admin")
unknown=$(show "an unknown host: 404, nothing forwarded" -H 'Host: unknown.example' "$PROXY/")
printf '\n\nstatuses: public=%s protected=%s unknown=%s\n' "$public" "$protected" "$unknown" >&2

if [ "${1:-}" = "--check" ]; then
  [ "$public" = 200 ] && [ "$protected" = 401 ] && [ "$unknown" = 404 ] || { echo "quickstart: unexpected answers" >&2; exit 1; }
  echo "quickstart: ok" >&2
  exit 0
fi
echo "Portcullis is serving on $PROXY (metrics: http://127.0.0.1:9090/metrics). Ctrl-C stops it." >&2
wait $PROXY_PID
