# hashwork/anvil: a local Ethereum chain for the stack. Build after hashwork/base:
#   docker build -f docker/anvil.Dockerfile -t hashwork/anvil:local docker/stage/anvil
# Its build context is docker/stage/anvil/ (not the repository): Anvil's native binary at the version package.json
# pins, staged there by docker/images.py from the project's own npm install. The npm package's node wrapper exits at once on SIGTERM while Anvil is
# still writing its state file, so the image runs the binary itself (contracts/devchain.py does the same).
ARG BASE_IMAGE=hashwork/base:local
FROM ${BASE_IMAGE}
USER root
COPY anvil /usr/local/bin/anvil
RUN chmod 0755 /usr/local/bin/anvil && /usr/local/bin/anvil --version \
    && mkdir -p /var/lib/anvil && chown hashwork:hashwork /var/lib/anvil
USER hashwork
EXPOSE 8545
HEALTHCHECK --interval=5s --timeout=5s --retries=12 \
    CMD ["python3", "-c", "import json, os, urllib.request; r = urllib.request.Request('http://127.0.0.1:' + os.environ.get('ANVIL_PORT', '8545'), json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': 'eth_chainId', 'params': []}).encode(), {'Content-Type': 'application/json'}); urllib.request.urlopen(r, timeout=4)"]
# Always --prune-history: without it Anvil writes gigabytes of old states to disk. --state loads the chain at start
# and writes it back on SIGTERM, and --state-interval every 30 s, so a crash loses at most 30 s of blocks.
ENTRYPOINT ["tini", "--", "anvil"]
CMD ["--host", "0.0.0.0", "--port", "8545", "--chain-id", "31337", "--accounts", "10", "--prune-history", "64", \
     "--state", "/var/lib/anvil/state.json", "--state-interval", "30"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/anvil" \
      org.opencontainers.image.revision="${REVISION}"
