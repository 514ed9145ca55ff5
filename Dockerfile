# syntax=docker/dockerfile:1
# blangko-server and blangko-counter in one image (entrypoint: the server).
#
#   docker build -t blangko:local .
#   blangko-server --token-file tokens.txt token add ops --role admin   # prints the token once
#   sudo chown 10001 tokens.txt   # the image's user reads it (the file stays mode 0600)
#   docker run --rm -p 127.0.0.1:50051:50051 -v "$PWD/tokens.txt:/run/secrets/tokens:ro" \
#       -e BLANGKO_TOKEN_FILE=/run/secrets/tokens blangko:local --demo  # SQLite inside the container
# It listens on 0.0.0.0 inside the container, so without a token file it refuses to start.
#
# docker-compose.yml runs two replicas of it over PostgreSQL. CI has no Docker engine: it validates
# the compose file and builds the same release binaries with the same cargo command
# (.ci/compose.sh), but it does not build or run this image.

# --- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# The whole workspace (every member's manifest must be there; .dockerignore keeps target/, keys
# and databases out). Protos compile with protox: no protoc needed. The cache mounts (BuildKit,
# the default builder of Docker Engine 23+ and of `docker compose`) keep the crates.io downloads
# and compiled dependencies between builds, so a source change rebuilds only the workspace
# crates; the binaries are copied out because the target directory is not part of the image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p blangko-server -p blangko-counter \
 && mkdir /out \
 && cp target/release/blangko-server target/release/blangko-counter /out/

# --- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 blangko \
 && useradd --system --uid 10001 --gid blangko --home-dir /var/lib/blangko --no-create-home \
      --shell /usr/sbin/nologin blangko \
 && install -d -o blangko -g blangko -m 0750 /var/lib/blangko

COPY --from=builder /out/blangko-server /out/blangko-counter /usr/local/bin/

# The working directory holds the SQLite database (the default) when no PostgreSQL URL is given.
WORKDIR /var/lib/blangko
USER 10001:10001

ENV BLANGKO_LISTEN=0.0.0.0:50051
EXPOSE 50051

# The gRPC health service, asked by the client shipped in the image. `status` exits non-zero when
# the server does not answer SERVING: not listening, hung (no answer within --timeout seconds),
# or answering NOT_SERVING, which it does only while it drains at shutdown.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
  CMD ["blangko-counter", "--server", "http://127.0.0.1:50051", "--timeout", "3", "status"]

ENTRYPOINT ["blangko-server"]
