# scopegate's image: `docker build -t scopegate .` (see README, "Docker").

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Symbols stripped from the binary (line tables would only serve a debugger); set for both
# builds below, since a profile change would rebuild every dependency.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every edit of the source. Stub targets let cargo resolve the
# package; their artifacts are removed so the real source is always compiled afterwards.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs && echo 'fn main() {}' > benches/admit.rs \
    && cargo build --release --locked \
    && rm -rf src benches target/release/scopegate* \
       target/release/deps/scopegate-* target/release/deps/libscopegate-* \
       target/release/.fingerprint/scopegate-*
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked

# ---- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/scopegate --create-home scopegate \
    && mkdir -p /var/lib/scopegate/data \
    && chown -R scopegate:scopegate /var/lib/scopegate
COPY --from=build /src/target/release/scopegate /usr/local/bin/scopegate
# Proxy and metrics on all interfaces, admin API on the container's loopback only (reach it
# with `docker exec`); mount your own over it (README, "Docker").
COPY deploy/docker/gateway.yaml /etc/scopegate/gateway.yaml
RUN scopegate check -c /etc/scopegate/gateway.yaml
USER 10001:10001
WORKDIR /var/lib/scopegate
# The embedded store (apps, keys, usage) lives here: keep it on a volume across containers.
VOLUME ["/var/lib/scopegate/data"]
EXPOSE 8080 8100
# SIGTERM starts a graceful shutdown: no new connections, in-flight requests get up to
# `shutdown_grace` (8s in the image config), then bookkeeping is flushed. Docker kills the
# process 10s after SIGTERM by default: keep `shutdown_grace` below `docker stop --time`
# (or compose's `stop_grace_period`), and raise both together.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["scopegate", "health", "-c", "/etc/scopegate/gateway.yaml"]
ENTRYPOINT ["scopegate"]
CMD ["serve", "-c", "/etc/scopegate/gateway.yaml"]
