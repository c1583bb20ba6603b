# Multi-stage build of the tessera gateway.
#   build:   the release binary, with dependencies cached in their own layer
#   runtime: a slim Debian with the binary, CA certificates and curl (for the healthcheck)
# In tier federated the gateway talks to an external Postgres (with pgvector) and Valkey, so the
# image carries no server bundles.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY openapi ./openapi
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tessera

FROM debian:bookworm-20251117-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/tessera --create-home --shell /usr/sbin/nologin tessera
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
USER tessera
ENV TESSERA_LISTEN=0.0.0.0:8443 \
    TESSERA_DATA_DIR=/var/lib/tessera
VOLUME ["/var/lib/tessera"]
EXPOSE 8443
ENTRYPOINT ["tessera"]
CMD ["serve"]
