# A local Ethereum chain (Anvil) for the compose stack. Build from the repository root:
#   docker build -f docker/anvil.Dockerfile -t hashwork/anvil:local .
# npm fetches the Anvil release that package.json pins; the final image holds only its native binary. That is on
# purpose: the npm package's node wrapper exits at once on SIGTERM while Anvil is still writing its state file, so
# `docker compose stop` would lose the chain (contracts/devchain.py runs the native binary for the same reason).
FROM node:22-bookworm-slim AS npm

COPY package.json /tmp/package.json
WORKDIR /build
# Only Anvil, in an empty folder, at the version package.json names (solc and OpenZeppelin are not needed here).
RUN version="$(node -p 'require("/tmp/package.json").devDependencies["@foundry-rs/anvil"]')" \
    && npm install --no-save --no-audit --no-fund --loglevel=error "@foundry-rs/anvil@${version}" \
    && for binary in node_modules/@foundry-rs/anvil-linux-*/bin/anvil node_modules/@foundry-rs/anvil/anvil; do \
         if [ -x "$binary" ]; then install -m 0755 "$binary" /usr/local/bin/anvil; break; fi; \
       done \
    && /usr/local/bin/anvil --version

FROM debian:bookworm-slim

# curl answers the health check (an eth_chainId call).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=npm /usr/local/bin/anvil /usr/local/bin/anvil
RUN useradd --create-home --uid 10001 --user-group anvil \
    && mkdir -p /var/lib/anvil \
    && chown anvil:anvil /var/lib/anvil
USER anvil

EXPOSE 8545
# Always --prune-history: without it Anvil writes gigabytes of old states to disk. --state loads the chain at start
# and writes it back on SIGTERM, and --state-interval every 30 s, so a crash loses at most 30 s of blocks.
ENTRYPOINT ["anvil"]
CMD ["--host", "0.0.0.0", "--port", "8545", "--chain-id", "31337", "--accounts", "10", "--prune-history", "64", \
     "--state", "/var/lib/anvil/state.json", "--state-interval", "30"]
