# syntax=docker/dockerfile:1
# Build: docker build -t grantd .
# Run:   docker run --rm -p 4180:4180 -v $PWD/grantd.yaml:/etc/grantd/config/grantd.yaml -e GRANTD_ENCRYPTION_KEY=$(openssl rand -base64 32) grantd
#        A published (non-loopback) proxy port needs `callers:` in the config (README: Security
#        model); grantd refuses to start on 0.0.0.0 without them unless told
#        `allow_unauthenticated_callers: true`.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engines.rs \
 && cargo build --release --locked --bin grantd \
 && rm -rf src benches
COPY src src
COPY benches benches
COPY migrations migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin grantd \
 && mkdir -p /out/var/lib/grantd

# distroless/cc: glibc + CA certificates, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/grantd /usr/local/bin/grantd
COPY rules /etc/grantd/rules
COPY examples/grantd.yaml /etc/grantd/config/grantd.yaml
# The store lives on a volume owned by the runtime user. Set GRANTD_ENCRYPTION_KEY and
# GRANTD_ADMIN_TOKEN: the example config's defaults are published values.
COPY --from=build --chown=nonroot:nonroot /out/var/lib/grantd /var/lib/grantd
ENV GRANTD_STORE=/var/lib/grantd/grantd.db
VOLUME /var/lib/grantd
USER nonroot
EXPOSE 4180
ENTRYPOINT ["/usr/local/bin/grantd", "serve"]
CMD ["--config", "/etc/grantd/config/grantd.yaml"]
