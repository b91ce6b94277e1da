# A static we-operator image: a musl build on a distroless base, running as non-root.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p we-operator \
 && cp target/x86_64-unknown-linux-musl/release/we-operator /we-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /we-operator /we-operator
USER 65532:65532
EXPOSE 8081 9090
ENTRYPOINT ["/we-operator"]
CMD ["run"]
