# syntax=docker/dockerfile:1

# Build stage: the full Rust toolchain. Protobuf is compiled in pure Rust
# (protox), so no protoc is installed.
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never
COPY . .
# The cache mounts keep the registry and target/ between builds; the binary is
# copied out in the same step because the mounted target/ is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p label-studio-identity --bin label-studio-identity \
    && install -D -m 0755 target/release/label-studio-identity /out/label-studio-identity

# Run stage: glibc and libgcc for the Rust binary, and nothing else: no shell,
# no package manager. Debian 12 matches the builder's bookworm glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/label-studio-identity /usr/local/bin/label-studio-identity
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# 50051: gRPC (with grpc.health.v1, reflection and Envoy's ext_authz); 8080: HTTP gateway
# checks; 9464: Prometheus metrics.
EXPOSE 50051 8080 9464
# Docker and Compose use this; Kubernetes ignores it and uses the chart's gRPC probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/label-studio-identity", "probe"]
ENTRYPOINT ["/usr/local/bin/label-studio-identity"]
CMD ["start"]
