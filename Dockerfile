# First version; the operability issue finishes it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin cohort-ingest

FROM debian:bookworm-slim
COPY --from=build /src/target/release/cohort-ingest /usr/local/bin/cohort-ingest
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cohort-ingest"]
