#!/bin/sh
# The node agent container: on its first start (no config in the state volume yet) it enrols this machine with
# the operator token it is given, then it runs `nodeagent run`. Any other command (`status`, `probe`, `pause`,
# `withdraw`, …) is handed to nodeagent as it is.
set -eu

config="${HASHWORK_AGENT_CONFIG:?HASHWORK_AGENT_CONFIG names the node config file}"
if [ "$#" -eq 0 ]; then
    set -- run
fi

if [ "$1" = "run" ] && [ ! -f "$config" ]; then
    if [ -z "${NODEAGENT_ENROLL_TOKEN:-}" ] || [ -z "${NODEAGENT_MARKETPLACE_URL:-}" ]; then
        echo "nodeagent: $config does not exist yet. To enrol this node on its first start, set" \
            "NODEAGENT_MARKETPLACE_URL (the marketplace's address) and NODEAGENT_ENROLL_TOKEN (your operator API" \
            "token)." >&2
        exit 2
    fi
    name="${NODEAGENT_NAME:-$(hostname)}"
    if [ -n "${NODEAGENT_KEY_FILE:-}" ]; then
        # Payouts go to this wallet instead of a new one.
        nodeagent enroll --marketplace "$NODEAGENT_MARKETPLACE_URL" --token "$NODEAGENT_ENROLL_TOKEN" \
            --name "$name" --slots "${NODEAGENT_SLOTS:-1}" --key-file "$NODEAGENT_KEY_FILE"
    else
        nodeagent enroll --marketplace "$NODEAGENT_MARKETPLACE_URL" --token "$NODEAGENT_ENROLL_TOKEN" \
            --name "$name" --slots "${NODEAGENT_SLOTS:-1}"
    fi
fi

exec nodeagent "$@"
