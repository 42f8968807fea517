#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine: the DICOM peers (DCMTK, Orthanc),
# PostgreSQL, docker-compose and Chromium from Debian's packages, the Python test dependencies
# into .venv, and the S3 servers (MinIO, SeaweedFS) and the OHIF viewer into a cache under
# ~/.cache/filmless.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v /usr/sbin/Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
command -v /usr/bin/openssl >/dev/null 2>&1 || need_apt+=(openssl)  # test certificates (DICOM TLS)
# PostgreSQL server for the index tests (tests/postgres.py starts its own, as the postgres
# user, in a temporary directory on a private port).
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
# docker-compose.yml is checked with Debian's docker-compose (`config` needs no Docker engine).
command -v /usr/bin/docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# The OHIF viewer tests (tests/e2e/test_ohif.py) drive Debian's Chromium with Playwright, which
# never downloads a browser of its own; npm fetches the prebuilt viewer (scripts/install-ohif.sh).
command -v /usr/bin/chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # Debian's orthanc package starts a system service where systemd runs; the tests start
  # their own Orthanc on private ports, so the service is not needed.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl stop orthanc || true
  fi
  # Likewise Debian's postgresql package creates and starts a "main" cluster; nothing uses it.
  if [[ " ${need_apt[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" {print $1, $2}' |
      while read -r version cluster; do $SUDO pg_ctlcluster "$version" "$cluster" stop || true; done
  fi
fi

bash scripts/install.sh
.venv/bin/pip install -q -e ".[test]"
# S3-compatible servers for the object-store tests (MinIO built from source, SeaweedFS),
# cached under ~/.cache/filmless: built once per machine.
bash scripts/install-object-stores.sh
# The prebuilt OHIF viewer (npm @ohif/app, pinned in the script), cached the same way.
bash scripts/install-ohif.sh >/dev/null
