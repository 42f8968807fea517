#!/usr/bin/env bash
# Installs the prebuilt OHIF viewer (npm package @ohif/app, pinned below) that filmless serves
# at /viewer/ (setting viewer_dist, `filmless serve --viewer-dist DIR`).
#
# The package ships the built viewer in its dist/ folder; its dependencies are only needed to
# build it, so the tarball is fetched with `npm pack` (npm checks it against the registry's
# integrity, and this script against the pinned one) instead of `npm install`, which would
# pull a few hundred build-time packages. The dist lands in a cache under ~/.cache/filmless
# (or $FILMLESS_CACHE), one directory per version, so a machine downloads each version once.
#
# Prints the dist directory on its last line:   filmless serve --viewer-dist "$(bash scripts/install-ohif.sh | tail -n1)"
set -euo pipefail

OHIF_VERSION=3.13.2
OHIF_INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==

CACHE="${FILMLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filmless}"
target="$CACHE/ohif-$OHIF_VERSION"
dist="$target/dist"

if [ -f "$dist/index.html" ]; then
  echo "ohif $OHIF_VERSION: cached" >&2
  echo "$dist"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "install-ohif: npm is needed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/ohif-tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "ohif $OHIF_VERSION: downloading @ohif/app (about 50 MB)" >&2
(cd "$tmp" && npm pack --silent --json "@ohif/app@$OHIF_VERSION" >pack.json)
integrity="$(sed -n 's/.*"integrity": *"\([^"]*\)".*/\1/p' "$tmp/pack.json" | head -n1)"
if [ "$integrity" != "$OHIF_INTEGRITY" ]; then
  echo "install-ohif: @ohif/app@$OHIF_VERSION has integrity $integrity, expected $OHIF_INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tmp"/ohif-app-"$OHIF_VERSION".tgz -C "$tmp" package/dist package/LICENSE
[ -f "$tmp/package/dist/index.html" ] || { echo "install-ohif: the package has no dist/index.html" >&2; exit 1; }

# Replace a half-written earlier attempt, then move the finished tree in place in one step.
rm -rf "$target"
mkdir -p "$tmp/out"
mv "$tmp/package/dist" "$tmp/package/LICENSE" "$tmp/out/"
mv "$tmp/out" "$target"
echo "ohif $OHIF_VERSION: installed" >&2
echo "$dist"
