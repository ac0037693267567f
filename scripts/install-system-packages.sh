#!/usr/bin/env bash
# Install the Debian packages the local services need, when they are missing.
# PostgreSQL server with contrib and pg_repack, the Docker engine, busybox for the probe image,
# and docker-compose to validate docker-compose.yaml.
set -euo pipefail

missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql postgresql-contrib)
[ -x /usr/lib/postgresql/15/bin/pg_repack ] || missing+=(postgresql-15-repack)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v docker-compose >/dev/null || missing+=(docker-compose)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${missing[*]}" >&2
  echo "Install them as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's postgresql package starts a cluster on port 5432; the project runs its own.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h | while read -r version name _; do
    pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi
