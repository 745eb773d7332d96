# Multi-stage build of both services. One builder compiles the workspace once; each service is its own final
# stage (`docker build --target analytics_server .`), so docker-compose.yml builds two small images from here.

# --- build: the whole workspace, release profile. protoc is vendored by fechatter_protos, so nothing but the Rust
# toolchain is needed. The cache mounts keep the registry and target/ between builds.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p analytics_server -p fechatter_server --bins \
    && install -D -t /out target/release/analytics_server target/release/fechatter_server

# --- runtime base: what both services need at run time (TLS roots, curl for health checks), a non-root user,
# and the state directories owned by it so that named volumes mounted there start writable.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/fechatter fechatter \
    && install -d -o fechatter -g fechatter /var/lib/fechatter /var/lib/fechatter/keys /var/lib/fechatter/files
WORKDIR /var/lib/fechatter

# --- analytics_server: JetStream -> ClickHouse ingester and HTTP ingest on 6690.
FROM runtime AS analytics_server
COPY --from=build /out/analytics_server /usr/local/bin/analytics_server
COPY analytics_server/analytics.yml /etc/fechatter/analytics.yml
ENV ANALYTICS_CONFIG=/etc/fechatter/analytics.yml RUST_LOG=info
USER fechatter
EXPOSE 6690
HEALTHCHECK --interval=5s --timeout=3s --retries=30 CMD curl -fsS http://127.0.0.1:6690/health || exit 1
ENTRYPOINT ["analytics_server"]

# --- fechatter_server: the chat API on 6688 (also `seed` and `gen-keys DIR`).
FROM runtime AS fechatter_server
COPY --from=build /out/fechatter_server /usr/local/bin/fechatter_server
COPY fechatter_server/chat.yml /etc/fechatter/chat.yml
ENV FECHATTER_CONFIG=/etc/fechatter/chat.yml \
    FECHATTER__FILES__DIR=/var/lib/fechatter/files \
    FECHATTER__AUTH__PRIVATE_KEY_PATH=/var/lib/fechatter/keys/private.pem \
    FECHATTER__AUTH__PUBLIC_KEY_PATH=/var/lib/fechatter/keys/public.pem \
    RUST_LOG=info
USER fechatter
EXPOSE 6688
HEALTHCHECK --interval=5s --timeout=3s --retries=30 CMD curl -fsS http://127.0.0.1:6688/health || exit 1
ENTRYPOINT ["fechatter_server"]
