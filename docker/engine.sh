#!/usr/bin/env bash
# `make docker-engine`: make sure a Docker engine answers, starting one if this machine can (root on Debian).
#
# It installs Debian's docker.io (and debootstrap, which docker/images.py uses when no registry serves a Debian
# image) and starts `dockerd --bridge=none --iptables=false`: every Hashwork container uses host networking, so no
# bridge or NAT is needed and all traffic stays on 127.0.0.1. The engine keeps running afterwards, like the
# machine's PostgreSQL and Redis (its log: /var/log/hashwork-dockerd.log).
# HASHWORK_NO_DOCKER=1 says this machine has no Docker: nothing is started, and the container tests are skipped.
set -euo pipefail

if [ "${HASHWORK_NO_DOCKER:-}" = 1 ]; then
    echo "==> HASHWORK_NO_DOCKER=1: no Docker engine here; the container tests will be skipped"
    exit 0
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "No Docker engine answers, and this is not root on Debian, so none can be started here. Install and start" >&2
    echo "Docker (Debian: sudo apt-get install docker.io debootstrap; sudo dockerd --bridge=none --iptables=false)," >&2
    echo "or set HASHWORK_NO_DOCKER=1 to skip the container tests explicitly." >&2
    exit 1
fi
missing=""
command -v dockerd >/dev/null || missing="docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    echo "==> installing$([ -n "${missing%% *}" ] && echo " $missing") (the images and the container tests need them)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "==> starting dockerd --bridge=none --iptables=false (log: /var/log/hashwork-dockerd.log)"
    setsid nohup dockerd --bridge=none --iptables=false >>/var/log/hashwork-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi
if ! docker info >/dev/null 2>&1; then
    echo "dockerd did not answer within 60 s; the end of /var/log/hashwork-dockerd.log:" >&2
    tail -n 20 /var/log/hashwork-dockerd.log >&2 || true
    exit 1
fi
echo "==> Docker engine $(docker version --format '{{.Server.Version}}') is running"
