# Keyward's container image: `keyward` built from this repository, on a slim runtime, as a
# non-root user. Used by docker-compose.yml (the alternative quick start in README.md).
# Not built in CI (the test suite validates docker-compose.yml's structure instead).

# --- build ---------------------------------------------------------------------------------
FROM rust:1.94-slim-bookworm AS build
# aws-lc-sys (the AEAD library's C core) needs a C toolchain, cmake and perl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake perl pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keyward \
 && install -m 0755 target/release/keyward /usr/local/bin/keyward

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates for TLS to a real AWS KMS or PostgreSQL with sslmode=verify-full.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keyward \
 && useradd --system --uid 10001 --gid keyward --home-dir /var/lib/keyward --shell /usr/sbin/nologin keyward \
 && install -d -m 0700 -o keyward -g keyward /var/lib/keyward /var/lib/keyward/shared
COPY --from=build /usr/local/bin/keyward /usr/local/bin/keyward
USER keyward:keyward
# No ./policies here: in development mode the server writes and uses its built-in copy of the
# shipped policies (docs/configuration.md); mount your own and set KEYWARD_AUTHZ__POLICIES_DIR.
WORKDIR /var/lib/keyward
ENV KEYWARD_DATA_DIR=/var/lib/keyward
ENTRYPOINT ["keyward"]
CMD ["serve"]
