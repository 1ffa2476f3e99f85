#!/usr/bin/env bash
# Builds gatewayd_<version>_<arch>.deb (`make deb`). The Debian packaging lives in
# packaging/debian; dpkg-buildpackage wants it at the top of the source tree, so the build runs
# in a temporary copy of the checkout. The .deb lands in packaging/build/ (or $1); its path is
# the only line on stdout (the build log goes to stderr).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/packaging/build}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(/usr/bin/python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")
changelog_version=$(dpkg-parsechangelog -l "$root/packaging/debian/changelog" -S Version)
if [ "$version" != "$changelog_version" ]; then
	echo "build-deb: pyproject.toml says $version, packaging/debian/changelog says" \
		"$changelog_version: add a changelog entry (dch -v $version)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/gatewayd-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/gatewayd-$version
mkdir "$src"
# The files of the checkout (tracked and new, not ignored, not deleted); a plain copy outside git.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	(cd "$root" && git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do
			if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
		done | tar --null -T - -cf -) | tar -xf - -C "$src"
else
	cp -a "$root"/. "$src"/
	rm -rf "$src/.venv" "$src/packaging/build"
fi
cp -a "$root/packaging/debian" "$src/debian"

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=gatewayd_${version}_${arch}.deb
(cd "$src" && dpkg-buildpackage -b -us -uc -tc) >&2 # stdout carries only the path
mv "$work/$deb" "$out/$deb"
echo "$out/$deb"
