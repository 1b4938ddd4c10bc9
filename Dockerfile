# syntax=docker/dockerfile:1
# cohort-ingest: build with the Rust toolchain, run the binary alone on distroless.
# scripts/docker-dry-run.sh replays this file without Docker: it knows the instructions
# used here (a new kind must be taught to it) and runs the build stage's RUN commands on
# the host, so they keep to WORKDIR.

# ---- build ----------------------------------------------------------------------------
FROM rust:1.94-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when a manifest, Cargo.lock or a
# vendored crate (vendor/README.md) change. Stub sources at the paths the manifests
# declare let cargo compile the service's dependencies (the benchmark's are not built).
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml ./bench/
COPY vendor ./vendor
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --package cohort-ingest --bin cohort-ingest \
    && rm -rf src

# The crate itself. Migrations are embedded at compile time (sqlx::migrate!); the query
# macros check the statements against the committed offline data in .sqlx/ (no database
# at build time; with no DATABASE_URL, the macros read it). COPY keeps the files'
# modification times, which may be older than the stub build's output: the touch makes
# sure cargo rebuilds the crate instead of keeping the stub binary.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY .sqlx ./.sqlx
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --package cohort-ingest --bin cohort-ingest

# ---- runtime ----------------------------------------------------------------------------
# glibc and libgcc, no shell, no package manager; user 65532 ("nonroot"), by number so
# that Kubernetes' runAsNonRoot can verify it (a user name it cannot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cohort-ingest /usr/local/bin/cohort-ingest
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
# No curl here: the binary checks itself (GET /healthz on LISTEN_ADDR).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/cohort-ingest", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cohort-ingest"]
CMD ["serve"]
