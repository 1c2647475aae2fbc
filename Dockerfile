# The Keygate image: keygate-operator and keygate-proxy in /usr/local/bin, on distroless
# (glibc, CA certificates, tzdata; no shell, no package manager), running as 65532:65532.
# Build: docker build -t keygate/keygate:0.1.0 .   (the chart runs each binary by its path)

# The build stage's Debian matches the runtime's (bookworm = debian12), so the binaries link
# against the same glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The very script CI runs (scripts/build-release), so the tests start what the image ships.
RUN scripts/build-release /out

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keygate-operator /out/keygate-proxy /usr/local/bin/
USER 65532:65532
# The proxy's traffic and admin ports; the operator's metrics port.
EXPOSE 8080 9901 8081
ENTRYPOINT ["/usr/local/bin/keygate-proxy"]
CMD ["--help"]
