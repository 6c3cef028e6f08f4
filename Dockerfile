# Builds the hitl-orchestrator binary; the same image runs the `api`, `worker` and
# `migrate` roles (see docker-compose.yml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin hitl-orchestrator

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 hitl
COPY --from=build /src/target/release/hitl-orchestrator /usr/local/bin/hitl-orchestrator
USER hitl
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hitl-orchestrator"]
CMD ["serve"]
