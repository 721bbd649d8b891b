# syntax=docker/dockerfile:1
# Build: a full Rust toolchain image; aws-lc-rs needs only a C compiler (gcc), which it has.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own that only Cargo.toml and Cargo.lock decide: a
# change to the proxy's code rebuilds the proxy, not its ~300 dependencies. Cargo reads every
# target the manifest names, so the sources and benches are stand-ins here (the benches stay
# stand-ins: the release binary does not build them).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && sed -n '/^\[\[bench\]\]/,/^name/ s/^name *= *"\(.*\)"/\1/p' Cargo.toml \
    | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
 && cargo build --release --locked --bin portcullis \
 && rm -rf src

COPY build.rs ./
COPY src ./src
# The image has no .git: the commit `portcullis --version` and portcullis_build_info report is
# passed in (`docker build --build-arg PORTCULLIS_COMMIT=$(git rev-parse --short=12 HEAD) .`).
ARG PORTCULLIS_COMMIT=unknown
ENV PORTCULLIS_COMMIT=${PORTCULLIS_COMMIT}
# COPY keeps the files' own times, which may be older than the stand-ins' build: make them newer
# so that cargo rebuilds the crate instead of keeping the stand-in.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

# The state directory, owned by the image's non-root user (65532) so the proxy can create what it
# needs there (the audit spool, 0700 as the proxy makes it; a key ring for [tokens]). Made here:
# the run image has no shell.
RUN install -d -m 0755 /out/var/lib/portcullis \
 && install -d -m 0700 /out/var/lib/portcullis/audit

# Run: a small glibc image with CA roots (for HTTPS upstreams and identity providers), as a
# non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/
# A config that listens on all interfaces (examples/container.toml); mount yours over it.
COPY examples/container.toml /etc/portcullis/portcullis.toml
COPY policies /etc/portcullis/policies
# Relative paths in the config (policy.dir = "policies") resolve against the config file's directory.
WORKDIR /etc/portcullis
USER nonroot:nonroot
# 8080 HTTP, 8443 HTTPS, 9090 admin (/healthz, /readyz, /metrics).
EXPOSE 8080 8443 9090
# With [audit.otlp], records wait here while the collector is unreachable: mount persistent
# storage. A new volume starts with the image's directory, owned by nonroot.
VOLUME ["/var/lib/portcullis/audit"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/portcullis", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
