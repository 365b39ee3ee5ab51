# syntax=docker/dockerfile:1
#
# pachyderm-backup container image (docs/IMAGE.md).
#
#   docker build -t pachyderm-backup:dev .
#
# Build arguments (defaults below):
#   RUST_IMAGE      the pinned Rust toolchain image of the build stage
#   RUNTIME_IMAGE   the base of the final image (Debian 12 bookworm, matching the
#                   build stage's glibc)
#   PG_MAJOR        major version of the PostgreSQL client tools (pg_dump, pg_restore)
#                   installed from PostgreSQL's own apt repository; must be at least
#                   the newest server version backed up (a pg_dump older than its
#                   server refuses to run), newer is fine
#   PGDG_KEY_FINGERPRINT  fingerprint the apt repository's signing key must have
#   CARGO_PROFILE   release (default) or dev

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS build
ARG CARGO_PROFILE=release
WORKDIR /src

# Dependency layer: built from the manifests alone, reused until Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    mkdir src; \
    echo 'fn main() {}' > src/main.rs; \
    cargo build --locked --profile "${CARGO_PROFILE}"; \
    rm -rf src

# The program itself (the demo's SQL fixtures live in src/demo/, embedded).
COPY src ./src
RUN set -eux; \
    find src -name '*.rs' -exec touch {} +; \
    cargo build --locked --profile "${CARGO_PROFILE}"; \
    dir="$([ "${CARGO_PROFILE}" = dev ] && echo debug || echo "${CARGO_PROFILE}")"; \
    install -D -m 0755 "target/${dir}/pachyderm-backup" /out/pachyderm-backup; \
    /out/pachyderm-backup --help >/dev/null

# ------------------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE}
ARG PG_MAJOR=17
ARG PGDG_KEY_FINGERPRINT=B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8

# ca-certificates: TLS to the object stores, the API server and PostgreSQL.
# tini: PID 1; forwards SIGTERM to the program (which then resumes Pachyderm) and
# reaps pg_dump/pg_restore children.
# postgresql-client-${PG_MAJOR}: pg_dump/pg_restore (and psql, the preflight's: the same
# libpq) from PostgreSQL's apt repository
# (Debian 12 ships 15 only). curl and gnupg fetch and check its key, then go.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg tini; \
    install -d -m 0755 /usr/share/postgresql-common/pgdg; \
    curl -fsSL --retry 3 -o /tmp/pgdg.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    export GNUPGHOME="$(mktemp -d)"; \
    gpg --batch --show-keys --with-colons /tmp/pgdg.asc | grep -q "^fpr:::::::::${PGDG_KEY_FINGERPRINT}:"; \
    gpg --batch --dearmor -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.gpg /tmp/pgdg.asc; \
    rm -rf "${GNUPGHOME}" /tmp/pgdg.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y --auto-remove curl gnupg; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/psql" --version; \
    groupadd --system --gid 65532 nonroot; \
    useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin nonroot

COPY --from=build /out/pachyderm-backup /usr/local/bin/pachyderm-backup

ENV LOG_FORMAT=json \
    PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin

LABEL org.opencontainers.image.title="pachyderm-backup" \
      org.opencontainers.image.description="Pause, back up and resume a Pachyderm cluster (PostgreSQL + object store)" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so Kubernetes can check runAsNonRoot without resolving a name.
USER 65532:65532
WORKDIR /tmp

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pachyderm-backup"]
CMD ["run"]
