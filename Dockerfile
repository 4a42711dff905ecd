# syntax=docker/dockerfile:1
# The cryptvol image: cryptvol-controller, cryptvol-node and the cryptvol admin CLI on Debian slim
# with fuse3 (fusermount3). Build from the repository root:
#
#   docker build -t cryptvol:0.1.0 .
#
# Nothing is fetched when a container starts; every dependency is in the image.

ARG RUST_IMAGE=rust:1.95-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# protoc is vendored by the proto crate and FUSE is spoken without libfuse, so the Rust image's
# compiler is all the build needs. Release binaries are stripped here; the workspace keeps debug
# symbols for profiling local builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p cryptvol -p cryptvol-controller --bins \
 && mkdir -p /out \
 && cp target/release/cryptvol target/release/cryptvol-node target/release/cryptvol-controller /out/

FROM ${RUNTIME_IMAGE}
# fuse3 brings fusermount3, used when a mount cannot be made directly; ca-certificates is for KMS
# endpoints reached over TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
LABEL org.opencontainers.image.title="cryptvol" \
      org.opencontainers.image.description="CSI driver for encrypted PersistentVolumes on shared POSIX storage" \
      org.opencontainers.image.licenses="Apache-2.0"
# The plugins run as root: the node plugin mounts, and the controller creates and deletes volume
# trees that pods of any uid wrote. The chart picks the command per container.
CMD ["cryptvol", "--help"]
