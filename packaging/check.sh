#!/usr/bin/env bash
# The packaging check CI runs (.ci/run, `make package-check`), as root on Debian 12: build the
# .deb, lintian, check the unit with systemd-analyze, install it with apt, run the installed
# daemon as the gatewayd user up to READY=1, upgrade it over itself keeping the state, purge it
# and check that nothing is left. It refuses to run when gatewayd is already installed, and it
# leaves the machine as it found it (package purged; the purge deletes the gatewayd account, and
# the check deletes it too if it fails before the purge and created it). GATEWAYD_DEB=path checks a .deb built before instead of building one.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DEBIAN_FRONTEND=noninteractive
BUILD_DEPS=(dh-virtualenv debhelper dpkg-dev lintian python3 python3-dev python3-venv
	libsystemd-dev pkg-config gcc systemd adduser)
MAX_EXPOSURE=5.0
UNIT=/lib/systemd/system/gatewayd.service
CONFIG=/etc/gatewayd/gatewayd.yaml
STATE=/var/lib/gatewayd
VENV=/opt/venvs/gatewayd

step() { printf '\n== %s\n' "$*"; }
fail() {
	echo "package-check: FAIL: $*" >&2
	exit 1
}
package_state() { dpkg-query -W -f='${db:Status-Abbrev}' gatewayd 2>/dev/null | tr -d ' ' || true; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges the package)"
case "$(package_state)" in
"" | un) ;;
*) fail "gatewayd is already installed ($(package_state)): purge it first, the check purges it" ;;
esac
user_existed=no
if getent passwd gatewayd >/dev/null; then user_existed=yes; fi

cleanup() {
	local status=$?
	case "$(package_state)" in
	"" | un) ;;
	*) apt-get purge -y -qq gatewayd >/dev/null 2>&1 || dpkg --purge gatewayd || true ;;
	esac
	if [ "$user_existed" = no ] && getent passwd gatewayd >/dev/null; then
		deluser --quiet --system gatewayd >/dev/null 2>&1 || true
	fi
	if [ "$user_existed" = no ] && getent group gatewayd >/dev/null; then
		delgroup --quiet --system gatewayd >/dev/null 2>&1 || true
	fi
	if [ "$status" != 0 ]; then echo "package-check: failed (exit $status)" >&2; fi
	exit "$status"
}
trap cleanup EXIT

step "build dependencies"
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
	dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "build"
started=$SECONDS
if [ -n "${GATEWAYD_DEB:-}" ]; then
	deb=$(readlink -f "$GATEWAYD_DEB") # a .deb built before: check it without rebuilding
else
	deb=$(packaging/build-deb.sh "$root/packaging/build")
fi
build_s=$((SECONDS - started))
unset GATEWAYD_DEB # not a setting: gatewayd refuses a GATEWAYD_* variable that names no key
[ -f "$deb" ] || fail "the build printed no .deb ($deb)"
version=$(dpkg-deb -f "$deb" Version)
size_kb=$(($(stat -c %s "$deb") / 1024))
echo "$deb: $size_kb KiB, built in ${build_s} s"

step "lintian --fail-on error"
lintian --fail-on error "$deb"

step "install"
apt-get install -y -qq "$deb" >/dev/null
[ "$(package_state)" = ii ] || fail "package state after install: $(package_state)"
[ "$(/usr/bin/gatewayd --version)" = "gatewayd $version" ] || fail "gatewayd --version: $(/usr/bin/gatewayd --version)"
[ "$(readlink -f /usr/bin/gatewayd)" = "$VENV/bin/gatewayd" ] || fail "/usr/bin/gatewayd target"
[ "$(head -n 1 "$VENV/bin/gatewayd")" = "#!$VENV/bin/python" ] || fail "entry point shebang"
[ "$(readlink -f "$VENV/bin/python")" = "$(readlink -f /usr/bin/python3)" ] ||
	fail "the virtualenv does not use Debian's python3"
"$VENV/bin/python" -c 'import systemd.daemon, pydantic_core, aiohttp, pymodbus, bleak, serial' ||
	fail "a dependency does not import from the virtualenv"

for doc in /usr/share/doc/gatewayd/operations.md /usr/share/doc/gatewayd/configuration.md \
	/usr/share/doc/gatewayd/examples/gatewayd.example.yaml /usr/share/man/man1/gatewayd.1.gz; do
	[ -f "$doc" ] || fail "no $doc"
done

getent passwd gatewayd | grep -q ":$STATE:/usr/sbin/nologin$" || fail "account: $(getent passwd gatewayd)"
id -nG gatewayd | tr ' ' '\n' | grep -qx dialout || fail "gatewayd is not in dialout: $(id -nG gatewayd)"
[ "$(stat -c '%U:%G %a' "$STATE")" = "gatewayd:gatewayd 750" ] || fail "$STATE: $(stat -c '%U:%G %a' "$STATE")"

dpkg-query -W -f='${Conffiles}\n' gatewayd | grep -q "^ $CONFIG " || fail "$CONFIG is not a conffile"
for dir in /etc/gatewayd/conf.d /etc/gatewayd/products; do [ -d "$dir" ] || fail "no $dir"; done
shopt -s nullglob
for product in config/products/*.yaml; do
	cmp -s "$product" "/etc/gatewayd/products/$(basename "$product")" || fail "$product not shipped"
done
shopt -u nullglob
identity=/etc/gatewayd/conf.d/00-identity.yaml
[ -f "$identity" ] || fail "postinst wrote no $identity"
node_id=$(sed -n 's/^  node_id: //p' "$identity")
expected=$(python3 - <<'EOF'
import hmac
from pathlib import Path

machine = bytes.fromhex(Path("/etc/machine-id").read_text().strip())
app = bytearray(hmac.new(machine, bytes.fromhex("0acbc2749b434da08801cda8e29881f4"), "sha256").digest()[:16])
app[6] = (app[6] & 0x0F) | 0x40
app[8] = (app[8] & 0x3F) | 0x80
print("gw-" + bytes(app).hex()[:16])
EOF
)
[ "$node_id" = "$expected" ] || fail "node id $node_id, expected $expected"
echo "node id $node_id"

out=$(runuser -u gatewayd -- /usr/bin/gatewayd check-config -c "$CONFIG") || fail "check-config: $out"
[ "$out" = "$CONFIG: configuration OK" ] || fail "check-config said: $out"
echo "$out"

step "systemd unit"
[ -f "$UNIT" ] || fail "no $UNIT"
for directive in Type=notify WatchdogSec= Restart=on-failure RestartPreventExitStatus=78 \
	User=gatewayd SupplementaryGroups=dialout StateDirectory=gatewayd \
	ConfigurationDirectory=gatewayd LoadCredential= ProtectSystem=strict \
	NoNewPrivileges=yes PrivateTmp=yes; do
	grep -q "^$directive" "$UNIT" || fail "$UNIT lacks $directive"
done
# PID 1 may not be systemd here: verify then exits 0 even on errors, so any output fails.
verify=$(systemd-analyze verify --man=no "$UNIT" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify printed: $verify"
echo "systemd-analyze verify: clean"
exposure=$(systemd-analyze security --offline=yes "$UNIT" 2>&1 | sed -n 's/^→ Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level from systemd-analyze security"
python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$exposure" "$MAX_EXPOSURE" ||
	fail "exposure $exposure is above $MAX_EXPOSURE"
echo "systemd-analyze security: exposure $exposure (limit $MAX_EXPOSURE)"
if [ -d /run/systemd/system ]; then
	# Under a real systemd the package has started the service in its sandbox.
	[ -L /etc/systemd/system/multi-user.target.wants/gatewayd.service ] || fail "unit not enabled"
	systemctl is-active --quiet gatewayd.service ||
		fail "gatewayd.service is not active: $(journalctl -u gatewayd.service -n 30 --no-pager)"
	echo "gatewayd.service: enabled and active"
fi

step "the installed daemon reaches READY=1 as the gatewayd user"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [ -d /run/systemd/system ]; then systemctl stop gatewayd.service || true; fi
GATEWAYD_API__PORT=$port python3 packaging/notify_ready.py --user gatewayd -- \
	/usr/bin/gatewayd run -c "$CONFIG"

# Nothing may appear beside the package's files (bytecode written at run time, for one).
stray=$(comm -13 <(dpkg -L gatewayd | sort -u) <(find "$VENV" | sort -u))
[ -z "$stray" ] || fail "files under $VENV that the package does not own: $stray"

step "upgrade over itself keeps state, identity and local edits"
echo "outbox" >"$STATE/check-survives-upgrade"
chown gatewayd:gatewayd "$STATE/check-survives-upgrade"
echo "# local edit by the packaging check" >>"$CONFIG"
identity_sum=$(sha256sum "$identity")
apt-get install -y -qq --reinstall "$deb" >/dev/null
[ "$(package_state)" = ii ] || fail "package state after upgrade: $(package_state)"
[ "$(cat "$STATE/check-survives-upgrade" 2>/dev/null)" = outbox ] || fail "state lost on upgrade"
grep -q "^# local edit by the packaging check$" "$CONFIG" || fail "local conffile edit lost"
[ "$(sha256sum "$identity")" = "$identity_sum" ] || fail "identity rewritten on upgrade"
runuser -u gatewayd -- /usr/bin/gatewayd check-config -c "$CONFIG" >/dev/null || fail "check-config after upgrade"
if [ -d /run/systemd/system ]; then
	systemctl is-active --quiet gatewayd.service || fail "gatewayd.service is not active after upgrade"
fi
echo "kept: $STATE/check-survives-upgrade, the conffile edit, $identity"

step "purge leaves nothing"
uid=$(id -u gatewayd)
apt-get purge -y -qq gatewayd >/dev/null
case "$(package_state)" in
"" | un) ;;
*) fail "package state after purge: $(package_state)" ;;
esac
for path in "$VENV" /opt/venvs/gatewayd /etc/gatewayd "$STATE" /usr/bin/gatewayd "$UNIT" \
	/usr/share/doc/gatewayd /usr/share/man/man1/gatewayd.1.gz \
	/etc/systemd/system/multi-user.target.wants/gatewayd.service \
	/var/lib/systemd/deb-systemd-helper-enabled/gatewayd.service \
	/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/gatewayd.service; do
	if [ -e "$path" ] || [ -L "$path" ]; then fail "$path is left after purge"; fi
done
owned=$(find /etc /opt /srv /tmp /usr /var -xdev -uid "$uid" -print 2>/dev/null | head -n 20)
[ -z "$owned" ] || fail "files of uid $uid left after purge: $owned"
if getent passwd gatewayd >/dev/null; then fail "the gatewayd account is left after purge"; fi
echo "purged: no files left, the gatewayd account removed"

printf '\npackage-check: OK: %s (%s KiB), built in %s s, exposure %s\n' \
	"$(basename "$deb")" "$size_kb" "$build_s" "$exposure"
