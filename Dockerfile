# syntax=docker/dockerfile:1
# The sluice host binary and the three guest components (see compose.yaml).

# ---- build: the host (native) and the guests (wasm32-wasip2)
FROM rust:1.95-bookworm AS builder
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# Caches keep the registry and the target directory between builds; the
# artifacts are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    make build guests \
    && mkdir -p /out \
    && cp target/release/sluice /out/sluice \
    && cp -r modules /out/modules

# ---- runtime
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/sluice sluice
COPY --from=builder /out/sluice /usr/local/bin/sluice
COPY --from=builder /out/modules /modules
USER sluice
WORKDIR /var/lib/sluice
ENTRYPOINT ["sluice"]
CMD ["--help"]
