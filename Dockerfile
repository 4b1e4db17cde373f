# Build: the same `cargo build --release --locked` CI and developers run.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked

# Run: a slim image, a non-root user, the example config listening on all interfaces.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/scopegate --create-home scopegate \
    && mkdir -p /etc/scopegate /var/lib/scopegate/data \
    && chown -R scopegate /var/lib/scopegate
COPY --from=build /src/target/release/scopegate /usr/local/bin/scopegate
COPY gateway.yaml /etc/scopegate/gateway.yaml
RUN sed -i -e 's/127\.0\.0\.1:\(8080\|9090\|9091\)/0.0.0.0:\1/' \
           -e 's#path: \./data#path: /var/lib/scopegate/data#' /etc/scopegate/gateway.yaml \
    && scopegate check -c /etc/scopegate/gateway.yaml
USER scopegate
WORKDIR /var/lib/scopegate
EXPOSE 8080 9090 9091
ENTRYPOINT ["scopegate"]
CMD ["serve", "-c", "/etc/scopegate/gateway.yaml"]
