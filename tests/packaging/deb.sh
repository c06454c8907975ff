#!/bin/sh
# The Debian packages, built and checked as a user of them would meet them:
# dpkg-buildpackage on a copy of the source (the checkout is not touched),
# the files each .deb holds, lintian with no error or warning, then (as
# root) dpkg -i of both, their binaries run from /usr/bin, their users and
# units checked, and both purged again, also when a check fails.
# Before that, make install's rules, staged: cmake --install of BUILD_DIR
# into a DESTDIR.
# Usage: deb.sh SOURCE_DIR BUILD_DIR
set -eu
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
fail() {
  echo "packaging: FAIL: $*" >&2
  exit 1
}
for tool in git dpkg-buildpackage dh lintian dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$tool not found: scripts/install-deps installs the packaging tools (dpkg-dev, debhelper, lintian)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/tlsplane-deb.XXXXXX")
installed=""
made_users=""
cleanup() {
  for p in $installed; do
    dpkg --purge "$p" >/dev/null 2>&1 || echo "packaging: could not purge $p" >&2
  done
  # A purge keeps the system users (Debian's way); those this test made go.
  for u in $made_users; do
    deluser --system --quiet "$u" >/dev/null 2>&1 || echo "packaging: could not remove user $u" >&2
    delgroup --system --quiet "$u" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# make install PREFIX=/usr, staged.
DESTDIR="$work/stage" cmake --install "$build" --prefix /usr >"$work/install-rules.log" 2>&1 || {
  cat "$work/install-rules.log" >&2
  fail "cmake --install $build failed"
}
for f in usr/bin/tlsplane-server usr/bin/tlsplane-agent usr/share/man/man8/tlsplane-server.8 \
  usr/share/man/man8/tlsplane-agent.8 usr/share/tlsplane/web/index.html usr/share/tlsplane/web/app.js; do
  [ -f "$work/stage/$f" ] || fail "make install put no /$f under DESTDIR"
done
for m in "$work"/stage/usr/share/man/man8/*.8; do
  out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null) || fail "man -l $m failed"
  [ -z "$out" ] || fail "man --warnings on $(basename "$m"): $out"
done
echo "packaging: make install's rules: the binaries and man pages (no man warning)"

# The files git tracks, as they are in the working tree.
mkdir "$work/tlsplane"
(cd "$src" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$work/tlsplane"
echo "packaging: dpkg-buildpackage -us -uc -b in $work/tlsplane"
if ! (cd "$work/tlsplane" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1); then
  tail -40 "$work/build.log" >&2
  fail "dpkg-buildpackage failed (the log's end is above)"
fi
version=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
server_deb="$work/tlsplane-server_${version}_${arch}.deb"
agent_deb="$work/tlsplane-agent_${version}_${arch}.deb"
changes="$work/tlsplane_${version}_${arch}.changes"
for f in "$server_deb" "$agent_deb" "$changes"; do
  [ -f "$f" ] || fail "dpkg-buildpackage made no $(basename "$f"): $(ls "$work")"
done

# What each package holds.
holds() {
  dpkg-deb -c "$1" | awk '{print $6}' | grep -qx "./$2" || fail "$(basename "$1") has no /$2"
}
for f in usr/bin/tlsplane-server usr/share/man/man8/tlsplane-server.8.gz \
  lib/systemd/system/tlsplane-server.service etc/default/tlsplane-server \
  usr/share/tlsplane/web/index.html usr/share/tlsplane/web/app.js usr/share/tlsplane/web/pages/certificates.js; do
  holds "$server_deb" "$f"
done
for f in usr/bin/tlsplane-agent usr/share/man/man8/tlsplane-agent.8.gz \
  lib/systemd/system/tlsplane-agent.service etc/default/tlsplane-agent; do
  holds "$agent_deb" "$f"
done
if dpkg-deb -c "$server_deb" | grep -q tlsplane-agent; then
  fail "tlsplane-server holds files of the agent"
fi
echo "packaging: both packages hold their binary, man page, unit and defaults file"

# lintian: every tag printed; an error or a warning fails.
lintian --info "$changes" >"$work/lintian.log" 2>&1 || true
cat "$work/lintian.log"
if grep -Eq '^[EW]: ' "$work/lintian.log"; then
  fail "lintian reports errors or warnings (above)"
fi
echo "packaging: lintian: no error, no warning"

if [ "$(id -u)" -ne 0 ]; then
  echo "packaging: not root: the packages were built and checked, not installed (run as root to install them)"
  exit 0
fi
for p in tlsplane-server tlsplane-agent; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
    fail "$p is already installed on this machine: this test installs and purges its own; remove it first"
  fi
done
for u in tlsplane tlsplane-agent; do
  getent passwd "$u" >/dev/null || made_users="$made_users $u"
done
installed="tlsplane-agent tlsplane-server"
dpkg -i "$server_deb" "$agent_deb" >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2
  fail "dpkg -i failed"
}
for p in tlsplane-server tlsplane-agent; do
  out=$(/usr/bin/$p --version) || fail "/usr/bin/$p --version failed"
  echo "$out" | head -1 | grep -qx "$p ${version%%-*}" ||
    fail "/usr/bin/$p --version says \"$(echo "$out" | head -1)\", not \"$p ${version%%-*}\""
  echo "packaging: /usr/bin/$p --version: $(echo "$out" | tr '\n' ';')"
done
for u in tlsplane tlsplane-agent; do
  entry=$(getent passwd "$u") || fail "no user $u after installing"
  case "$entry" in
  *:/usr/sbin/nologin | *:/bin/false) ;;
  *) fail "user $u has a login shell: $entry" ;;
  esac
done
if command -v systemd-analyze >/dev/null 2>&1; then
  for p in tlsplane-server tlsplane-agent; do
    out=$(systemd-analyze verify "/lib/systemd/system/$p.service" 2>&1) ||
      fail "systemd-analyze verify $p.service: $out"
    [ -z "$out" ] || fail "systemd-analyze verify $p.service: $out"
  done
  echo "packaging: systemd-analyze verify: both units clean"
else
  echo "packaging: systemd-analyze not found (package systemd): the units were not verified"
fi
man -w tlsplane-server tlsplane-agent >/dev/null || fail "man cannot find the man pages"
echo "packaging: installed, run, verified; purging"
