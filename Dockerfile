# Build stage: the Rust toolchain and a C compiler are all it needs; protoc
# and SQLite come from crates.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# Not built here, but Cargo.toml names the bench target, and cargo refuses a
# manifest whose named targets are missing.
COPY benches ./benches
RUN cargo build --release --locked --bin tenantry \
 && strip target/release/tenantry

# Runtime stage: a small Debian with one static-ish binary, run as non-root.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin tenantry \
 && mkdir -p /data \
 && chown tenantry:tenantry /data
COPY --from=build /src/target/release/tenantry /usr/local/bin/tenantry
USER tenantry
ENV TENANTRY_LISTEN=0.0.0.0:50051 \
    TENANTRY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051
# The binary asks itself: grpc.health.v1 on TENANTRY_LISTEN (0.0.0.0 means
# this host). NOT_SERVING while draining at shutdown.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/tenantry", "health", "--timeout-ms", "3000"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tenantry"]
CMD ["serve"]
