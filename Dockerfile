# syntax=docker/dockerfile:1
# Build: a full Rust toolchain image; aws-lc-rs needs only a C compiler (gcc), which it has.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

# Run: a small glibc image with CA roots (for HTTPS upstreams), as a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY examples/minimal.toml /etc/portcullis/portcullis.toml
COPY policies /etc/portcullis/policies
# Relative paths in the config (policy.dir = "policies") resolve against the working directory.
WORKDIR /etc/portcullis
USER nonroot:nonroot
# 8080 HTTP, 8443 HTTPS, 9090 admin (/healthz, /readyz, /metrics). In a container, set the
# listeners to 0.0.0.0 in the config you mount at /etc/portcullis/portcullis.toml.
EXPOSE 8080 8443 9090
# With [audit.otlp], mount persistent storage for the spool (audit.spool.dir), owned by nonroot.
VOLUME ["/var/lib/portcullis/audit"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/portcullis", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
