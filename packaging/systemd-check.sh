#!/usr/bin/env bash
# The package under a real systemd (.ci/run, after packaging/check.sh; as root on Debian 12).
# Boots a minimal Debian 12 root in systemd-nspawn, with systemd as its PID 1 and a network of
# its own (loopback only), and checks the .deb there: install (enabled, running, READY with a
# status, /healthz), the sandbox as the kernel applies it, the journal's structured fields,
# the watchdog, reload and stop, an upgrade while running (outbox delivered after it to a
# broker started in the container, the admin's conffile kept), remove and purge. Each check
# prints what it verified and its figure. docs/operations.md ("Verified under systemd") says
# what this covers and what it cannot.
#
# The root is built once with mmdebstrap from the mirror apt already uses and cached under
# $SYSTEMD_CHECK_CACHE (default /var/tmp/gatewayd-systemd-check), keyed by the mirror and the
# package list; every run boots a throw-away overlay of it. GATEWAYD_DEB=path checks that .deb
# (CI passes the one packaging/check.sh built); without it the package is built first.
# A container that cannot boot is a failure, never a skip.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DEBIAN_FRONTEND=noninteractive
SUITE=bookworm
ROOT_PACKAGES=(systemd systemd-sysv dbus python3 libsystemd0 adduser curl procps mosquitto)
CACHE=${SYSTEMD_CHECK_CACHE:-/var/tmp/gatewayd-systemd-check}
MAX_EXPOSURE=2.0
STOP_LIMIT_S=5
# The watchdog check lowers WatchdogSec for its own run (a runtime drop-in): the shipped 30 s is
# the same mechanism and would add half a minute to CI.
CHECK_WATCHDOG_S=5
API=http://127.0.0.1:8080
TOKEN=systemd-check-read-token
CONFIG=/etc/gatewayd/gatewayd.yaml
STATE=/var/lib/gatewayd
STARTED_MSG=39f53479d3a045ac8e11786248231fbf # systemd's "job done" message id

stage_started=$SECONDS
step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() {
	echo "systemd-check: FAIL: $*" >&2
	if [ -n "${pid1:-}" ] && kill -0 "$pid1" 2>/dev/null; then
		echo "-- the last lines of journalctl -u gatewayd in the container:" >&2
		nsenter -t "$pid1" -a journalctl -u gatewayd.service -n 25 --no-pager >&2 || true
	fi
	exit 1
}
now() { date +%s.%N; }
since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.2f}")' "$1"; }
le() { python3 -c 'import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))' "$1" "$2"; }

[ "$(id -u)" = 0 ] || fail "run as root (it mounts an overlay and boots a container)"

# --- the tools, the mirror and the cached root -------------------------------------------
step "tools and root file system"
missing=()
for pkg in systemd-container mmdebstrap util-linux python3 dpkg-dev; do
	dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian sources apt already uses, as one-line entries for the suite (deb822 and old style).
mirrors=$(python3 - "$SUITE" <<'EOF'
import glob, sys
suite = sys.argv[1]
entries = []
def add(uri, suites, comps):
    for s in suites:
        if s == suite or s.startswith(suite + "-"):
            entries.append(f"deb {uri} {s} {' '.join(comps) or 'main'}")
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
            for uri in fields.get("uris", []):
                add(uri, fields.get("suites", []), fields.get("components", []))
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        words = line.split("#")[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words.pop(0)
            words.pop(0)
        if len(words) >= 2:
            add(words[0], [words[1]], words[2:])
print("\n".join(dict.fromkeys(entries)))
EOF
)
[ -n "$mirrors" ] || fail "no $SUITE entry in /etc/apt/sources.list or /etc/apt/sources.list.d/"
key=$(printf '%s\n' "$SUITE" "$mirrors" "${ROOT_PACKAGES[@]}" "minbase; mosquitto disabled" | sha256sum | cut -c1-16)
base=$CACHE/$SUITE-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time; a concurrent run waits and reuses it
if [ -f "$base/.complete" ]; then
	ok "cached root $base (mirror $(echo "$mirrors" | head -n 1 | cut -d' ' -f2))"
else
	rm -rf "$base" "$base.new"
	started=$SECONDS
	include=$(
		IFS=,
		echo "${ROOT_PACKAGES[*]}"
	)
	# The broker is started by the upgrade check, not at boot.
	mmdebstrap --quiet --variant=minbase --include="$include" \
		--customize-hook='systemctl --root="$1" disable mosquitto.service' \
		"$SUITE" "$base.new" - <<<"$mirrors" >&2 ||
		fail "mmdebstrap could not build the root from: $mirrors"
	touch "$base.new/.complete"
	mv "$base.new" "$base"
	ok "built root $base in $((SECONDS - started)) s ($(du -sm "$base" | cut -f1) MB, mirror $(echo "$mirrors" | head -n 1 | cut -d' ' -f2))"
fi
exec 9>&-

# --- the package: the one given, or built now; and a second build with a higher version --
if [ -n "${GATEWAYD_DEB:-}" ]; then
	deb=$(readlink -f "$GATEWAYD_DEB")
else
	deb=$(packaging/build-deb.sh "$root/packaging/build")
fi
[ -f "$deb" ] || fail "no .deb at $deb"
version=$(dpkg-deb -f "$deb" Version)

run=$(mktemp -d /var/tmp/gatewayd-systemd-check.XXXXXX)
merged=$run/root
nspawn_pid=""
pid1=""
cleanup() {
	local status=$?
	set +e
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		if [ -n "$pid1" ]; then timeout 10 nsenter -t "$pid1" -a systemctl poweroff >/dev/null 2>&1; fi
		for _ in $(seq 100); do
			kill -0 "$nspawn_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$nspawn_pid" 2>/dev/null; then
			echo "systemd-check: the container did not power off; terminating systemd-nspawn" >&2
			kill -TERM "$nspawn_pid"
			sleep 2
			kill -KILL "$nspawn_pid" 2>/dev/null
		fi
		wait "$nspawn_pid" 2>/dev/null
	fi
	if mountpoint -q "$merged"; then umount "$merged" || umount -l "$merged"; fi
	rm -rf "$run"
	if [ "$status" != 0 ]; then echo "systemd-check: failed (exit $status)" >&2; fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

deb2=$run/gatewayd_${version}+systemdcheck1.deb
dpkg-deb -R "$deb" "$run/deb2"
sed -i "s/^Version: .*/Version: ${version}+systemdcheck1/" "$run/deb2/DEBIAN/control"
dpkg-deb -Zgzip -z1 -b "$run/deb2" "$deb2" >/dev/null
rm -rf "$run/deb2"
ok "packages: $(basename "$deb") and $(basename "$deb2") (same files, higher version)"

# --- boot ---------------------------------------------------------------------------------
step "boot systemd in the container"
mkdir "$run/upper" "$run/work" "$merged"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$merged" ||
	fail "cannot mount an overlay on $base"
cp "$deb" "$deb2" "$merged/root/"
booted=$(now)
setsid systemd-nspawn -D "$merged" -b --console=pipe --register=no --keep-unit --private-network \
	-M gatewayd-check </dev/null >"$run/console.log" 2>&1 &
nspawn_pid=$!
cannot_boot() {
	echo "systemd-check: the container cannot be booted here (systemd-nspawn needs root, PID/mount/" \
		"network namespaces and a cgroup hierarchy). This is a failure, not a skip." >&2
	tail -n 30 "$run/console.log" >&2
	fail "$*"
}
# The container's PID 1: a descendant of systemd-nspawn that is pid 1 in its own PID namespace
# and has become systemd (before that it is nspawn's child, still in the host's mount namespace).
container_init() {
	local pids=$1 next pid
	while [ -n "$pids" ]; do
		next=""
		for pid in $pids; do
			if [ "$(sed -n 's/^NSpid:.*[[:space:]]//p' "/proc/$pid/status" 2>/dev/null)" = 1 ] &&
				[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
				echo "$pid"
				return 0
			fi
			next="$next $(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
		done
		pids=$(echo $next) # word-split on purpose
	done
	return 1
}
for _ in $(seq 100); do
	pid1=$(container_init "$nspawn_pid" || true)
	[ -n "$pid1" ] && break
	kill -0 "$nspawn_pid" 2>/dev/null || cannot_boot "systemd-nspawn exited"
	sleep 0.1
done
[ -n "$pid1" ] || cannot_boot "no systemd as the container's PID 1 after 10 s"
for _ in $(seq 100); do
	[ -S "/proc/$pid1/root/run/systemd/private" ] && break
	kill -0 "$nspawn_pid" 2>/dev/null || cannot_boot "systemd-nspawn exited"
	sleep 0.1
done
# Commands run inside with nsenter (there is no host system bus), with a clean environment.
ct() { nsenter -t "$pid1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
	DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= "$@"; }
state=$(timeout 60 nsenter -t "$pid1" -a systemctl is-system-running --wait 2>&1 || true)
case "$state" in
running) ;;
*) cannot_boot "system state '$state'; failed units: $(ct systemctl --failed --no-legend 2>&1 | tr '\n' ' ')" ;;
esac
[ "$(ct readlink /proc/1/exe)" = /usr/lib/systemd/systemd ] || cannot_boot "PID 1 is not systemd"
ok "systemd $(ct systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1, 'running' $(since "$booted") s after boot"

# --- helpers ------------------------------------------------------------------------------
prop() { ct systemctl show -p "$1" --value gatewayd.service; }
main_pid() { prop MainPID; }
# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.1 s until COMMAND succeeds.
wait_for() {
	local limit=$1 what=$2 deadline
	shift 2
	deadline=$(python3 -c 'import sys, time; print(time.time() + float(sys.argv[1]))' "$limit")
	until "$@"; do
		le "$(now)" "$deadline" || fail "$what: not within $limit s"
		sleep 0.1
	done
}
running() { [ "$(ct systemctl show -p ActiveState,SubState --value gatewayd.service | tr '\n' ' ')" = "active running " ]; }
running_as_new() { running && [ "$(main_pid)" != "$1" ] && [ "$(main_pid)" != 0 ]; }
# stats FIELD...: the outbox figures from GET /v1/outbox/stats (records, drops, oldest_age_s).
stats() {
	ct curl -sSf -H "X-Auth-Token: $TOKEN" "$API/v1/outbox/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(" ".join(json.dumps(s[k], sort_keys=True, separators=(",", ":")) for k in sys.argv[1:]))' "$@"
}
records_at_least() { [ "$(stats records)" -ge "$1" ]; }
cursor() { ct journalctl -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# unit_journal CURSOR: the unit's entries after CURSOR (the daemon's and systemd's about it),
# one JSON object a line. The unit is matched here, not by journalctl: given a match, the
# journalctl of systemd 252 leaves out the first matching entry after --after-cursor.
unit_journal() {
	ct journalctl -o json --no-pager --after-cursor="$1" | python3 -c '
import json, sys
for line in sys.stdin:
    if "gatewayd.service" in (json.loads(line).get("_SYSTEMD_UNIT"), json.loads(line).get("UNIT")):
        sys.stdout.write(line)'
}
# Warnings and worse of the unit after a cursor, one message a line.
warnings_after() {
	unit_journal "$1" | python3 -c '
import json, sys
for e in map(json.loads, sys.stdin):
    if int(e.get("PRIORITY", 6)) <= 4:
        print(e.get("MESSAGE"))'
}

# --- 1. install ---------------------------------------------------------------------------
step "1. install: enabled, running, READY, /healthz"
c0=$(cursor)
started=$(now)
ct apt-get install -y -qq "/root/$(basename "$deb")" >"$run/install.log" 2>&1 ||
	fail "apt-get install: $(tail -n 20 "$run/install.log")"
install_s=$(since "$started")
[ "$(ct dpkg-query -W -f='${Version}' gatewayd)" = "$version" ] || fail "installed version"
[ "$(ct systemctl is-enabled gatewayd.service)" = enabled ] || fail "gatewayd.service is not enabled"
running || fail "gatewayd.service is not active (running): $(ct systemctl status gatewayd --no-pager 2>&1 | head -n 20)"
status_text=$(prop StatusText)
[ -n "$status_text" ] || fail "no StatusText: the daemon sent no STATUS= with READY=1"
[ "$(prop Type)" = notify ] || fail "Type is $(prop Type), not notify"
healthz=$(ct curl -sS -o /dev/null -w '%{http_code}' "$API/healthz")
[ "$healthz" = 200 ] || fail "/healthz answered $healthz"
health=$(ct curl -sS "$API/healthz" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
warned=$(warnings_after "$c0")
[ -z "$warned" ] || fail "warnings in journalctl -u gatewayd after install: $warned"
ok "installed in $install_s s; enabled, active (running), READY with StatusText \"$status_text\";" \
	"/healthz 200 ($health); no warning or worse in the unit's journal"

# --- 2. sandbox ---------------------------------------------------------------------------
step "2. the sandbox as the kernel applies it"
pid=$(main_pid)
proc_status=$(ct cat "/proc/$pid/status")
field() { echo "$proc_status" | sed -n "s/^$1:[[:space:]]*//p"; }
for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
	[ "$(field "$cap")" = 0000000000000000 ] || fail "$cap of pid $pid is $(field "$cap")"
done
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs is $(field NoNewPrivs)"
[ "$(field Seccomp)" = 2 ] || fail "Seccomp is $(field Seccomp), not 2 (filter)"
[ "$(ct stat -c %U "/proc/$pid")" = gatewayd ] || fail "the main process does not run as gatewayd"
# In the service's own mount namespace: / refuses writes even to root, the state dir takes them.
in_service() { ct nsenter -t "$pid" -m -- "$@"; }
if ro=$(in_service touch /systemd-check-probe 2>&1); then fail "/ is writable in the service's namespace"; fi
case "$ro" in *"Read-only file system"*) ;; *) fail "writing / failed otherwise: $ro" ;; esac
in_service setpriv --reuid=gatewayd --regid=gatewayd --init-groups \
	sh -c "touch $STATE/systemd-check-probe && rm $STATE/systemd-check-probe" ||
	fail "$STATE is not writable by gatewayd in the service's namespace"
if in_service setpriv --reuid=gatewayd --regid=gatewayd --init-groups touch /etc/gatewayd/probe 2>/dev/null; then
	fail "/etc/gatewayd is writable by the service"
fi
exposure=$(ct systemd-analyze security gatewayd.service 2>&1 |
	sed -n 's/^→ Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level from systemd-analyze security"
le "$exposure" "$MAX_EXPOSURE" || fail "exposure $exposure is above $MAX_EXPOSURE"
ok "pid $pid as gatewayd: capabilities 0 (inheritable, permitted, effective, bounding, ambient)," \
	"NoNewPrivs 1, Seccomp 2 (filter); / read-only (EROFS), $STATE writable, /etc/gatewayd not;" \
	"systemd-analyze security: exposure $exposure (limit $MAX_EXPOSURE)"

# --- 3. journald fields -------------------------------------------------------------------
step "3. journald: the structured fields"
# An admin's change to the conffile: the cloud on a broker in the container (started by the
# upgrade check, so records buffer until then), every record synced, a read token and a
# virtual device producing a record every 0.2 s. The upgrade check expects it kept.
sha=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat >>"$merged$CONFIG" <<EOF

# Added by the systemd check (an admin's local change).
cloud:
  host: 127.0.0.1
  reconnect_max_s: 1
outbox:
  durability: full
api:
  tokens:
    systemd-check: {sha256: "$sha", scope: read}
connections:
  probe:
    driver: memory
    devices:
      counter:
        interval_s: 0.2
        points:
          n: {initial: 0, step: 1}
EOF
ct gatewayd check-config -c "$CONFIG" >/dev/null || fail "check-config refused the admin's change"
c1=$(cursor)
old=$(main_pid)
ct systemctl restart gatewayd.service
wait_for 30 "restart after the configuration change" running_as_new "$old"
warned_since() { [ -n "$(warnings_after "$1")" ]; }
wait_for 15 "the uplink's warning about the absent broker" warned_since "$c1"
unit_journal "$c1" >"$run/journal.json"
journal_fields=$(python3 - "$run/journal.json" <<'EOF'
import json
import sys

daemon = [e for e in map(json.loads, open(sys.argv[1])) if e.get("SYSLOG_IDENTIFIER") == "gatewayd"]


def one(pred, what):
    for e in daemon:
        if pred(e):
            return e
    sys.exit(f"no journal entry from the daemon with {what}")


ready = one(lambda e: e.get("MESSAGE") == "ready", "MESSAGE=ready")
warn = one(lambda e: e.get("PRIORITY") == "4", "PRIORITY=4 (the absent broker)")
for e, prio in ((ready, "6"), (warn, "4")):
    msg = e.get("MESSAGE")
    for key in ("MESSAGE", "PRIORITY", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"):
        if not e.get(key):
            sys.exit(f"{key}= missing from {msg!r}")
    if e.get("_TRANSPORT") != "journal":
        sys.exit(f"{msg!r} came by {e.get('_TRANSPORT')}, not as structured journal fields")
    if e["PRIORITY"] != prio:
        sys.exit(f"{msg!r}: PRIORITY={e['PRIORITY']}, expected {prio}")
if ready["LOGGER"] != "gatewayd.app":
    sys.exit(f"'ready' has LOGGER={ready['LOGGER']}")
print(
    f"'ready': PRIORITY=6 LOGGER={ready['LOGGER']} CODE_FUNC={ready['CODE_FUNC']}"
    f" CODE_LINE={ready['CODE_LINE']}; '{warn['MESSAGE'][:32]}...': PRIORITY=4"
    f" LOGGER={warn['LOGGER']}; {len(daemon)} entries, SYSLOG_IDENTIFIER=gatewayd,"
    f" _TRANSPORT=journal"
)
EOF
) || fail "journal fields: $journal_fields"
ok "$journal_fields"

# --- 4. watchdog --------------------------------------------------------------------------
step "4. watchdog: a SIGSTOPped daemon is killed and restarted, the outbox kept"
[ "$(prop WatchdogUSec)" = 30s ] || fail "the unit's WatchdogSec is $(prop WatchdogUSec), not 30s"
ct sh -c "mkdir -p /run/systemd/system/gatewayd.service.d &&
	printf '[Service]\nWatchdogSec=${CHECK_WATCHDOG_S}s\n' >/run/systemd/system/gatewayd.service.d/50-check-watchdog.conf"
ct systemctl daemon-reload
old=$(main_pid)
ct systemctl restart gatewayd.service
wait_for 30 "restart with WatchdogSec=${CHECK_WATCHDOG_S}s" running_as_new "$old"
[ "$(prop WatchdogUSec)" = "${CHECK_WATCHDOG_S}s" ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
wait_for 30 "20 records buffered" records_at_least 20
restarts=$(prop NRestarts)
pid=$(main_pid)
read -r before drops_before < <(stats records drops)
c3=$(cursor)
stopped=$(now)
ct kill -STOP "$pid"
until running_as_new "$pid"; do
	le "$(since "$stopped")" 60 || fail "no restart within 60 s of SIGSTOP: $(ct systemctl status gatewayd --no-pager 2>&1 | head -n 12)"
	sleep 0.1
done
restart_s=$(since "$stopped")
[ "$(prop NRestarts)" = $((restarts + 1)) ] || fail "NRestarts $restarts -> $(prop NRestarts)"
# When systemd gave up on the daemon: its "Watchdog timeout" entry, on the clock the host shares.
killed_after=$(unit_journal "$c3" | python3 -c '
import json, sys
for e in map(json.loads, sys.stdin):
    if "Watchdog timeout" in e.get("MESSAGE", ""):
        ts = int(e["__REALTIME_TIMESTAMP"]) / 1e6
        print(f"{ts - float(sys.argv[1]):.2f}")
        break' "$stopped")
[ -n "$killed_after" ] || fail "no 'Watchdog timeout' from systemd in the journal"
le "$killed_after" "$CHECK_WATCHDOG_S.2" || fail "killed $killed_after s after SIGSTOP (WatchdogSec=${CHECK_WATCHDOG_S}s)"
read -r after drops_after < <(stats records drops)
[ "$drops_before" = "{}" ] && [ "$drops_after" = "{}" ] || fail "records dropped: $drops_before -> $drops_after"
[ "$after" -ge "$before" ] || fail "outbox: $before records before SIGSTOP, $after after the restart"
ct rm /run/systemd/system/gatewayd.service.d/50-check-watchdog.conf
ct systemctl daemon-reload
ok "SIGSTOP pid $pid: killed by the watchdog after $killed_after s (WatchdogSec=${CHECK_WATCHDOG_S}s;" \
	"shipped 30s), running again as pid $(main_pid) after $restart_s s (RestartSec=5s); NRestarts" \
	"$restarts -> $((restarts + 1)); outbox $before records before, $after after, none dropped"

# --- 5. reload and stop -------------------------------------------------------------------
step "5. reload is not claimed; stop within ${STOP_LIMIT_S} s"
[ "$(prop CanReload)" = no ] || fail "CanReload=$(prop CanReload) but the daemon does not reload"
[ -z "$(prop ExecReload)" ] || fail "the unit has ExecReload=$(prop ExecReload)"
if reload=$(ct systemctl reload gatewayd.service 2>&1); then fail "systemctl reload succeeded"; fi
case "$reload" in *"Job type reload is not applicable"*) ;; *) fail "systemctl reload said: $reload" ;; esac
running || fail "not running after the refused reload"
started=$(now)
ct systemctl stop gatewayd.service
stop_s=$(since "$started")
le "$stop_s" "$STOP_LIMIT_S" || fail "systemctl stop took $stop_s s (limit $STOP_LIMIT_S s)"
[ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] ||
	fail "after stop: Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
ct systemctl start gatewayd.service
running || fail "not running after start"
ok "CanReload=no, no ExecReload; 'systemctl reload' refused: \"${reload#Failed to reload gatewayd.service: }\";" \
	"stopped in $stop_s s with exit status 0 (limit $STOP_LIMIT_S s)"

# --- 6. upgrade while running -------------------------------------------------------------
step "6. upgrade while running: one restart, state and conffile kept, outbox delivered after"
wait_for 30 "records buffered before the upgrade" records_at_least 20
identity_sum=$(ct sha256sum /etc/gatewayd/conf.d/00-identity.yaml)
outbox_inode=$(ct stat -c %i "$STATE/outbox.db")
ct sh -c "echo kept >$STATE/systemd-check-survives && chown gatewayd:gatewayd $STATE/systemd-check-survives"
old=$(main_pid)
c2=$(cursor)
upgrade_started=$(now)
read -r before_upgrade < <(stats records)
ct apt-get install -y -qq "/root/$(basename "$deb2")" >"$run/upgrade.log" 2>&1 ||
	fail "upgrade: $(tail -n 20 "$run/upgrade.log")"
upgrade_s=$(since "$upgrade_started")
[ "$(ct dpkg-query -W -f='${Version}' gatewayd)" = "${version}+systemdcheck1" ] || fail "version after upgrade"
wait_for 30 "running after the upgrade" running_as_new "$old"
unit_journal "$c2" >"$run/upgrade-journal.json"
starts=$(python3 -c '
import json, sys
print(sum(e.get("MESSAGE_ID") == sys.argv[2] and e.get("JOB_RESULT") == "done"
    and e["MESSAGE"].startswith("Started ") for e in map(json.loads, open(sys.argv[1]))))' \
	"$run/upgrade-journal.json" "$STARTED_MSG")
[ "$starts" = 1 ] || fail "the upgrade started the service $starts times, not once"
if grep -E "Scheduled restart job|Failed with result|Main process exited, code=(killed|dumped)" "$run/upgrade-journal.json"; then
	fail "the service failed during the upgrade"
fi
grep -q '^# Added by the systemd check' "$merged$CONFIG" || fail "the admin's change to $CONFIG is lost"
[ ! -e "$merged$CONFIG.dpkg-dist" ] && [ ! -e "$merged$CONFIG.dpkg-old" ] || fail "dpkg left a .dpkg-dist/.dpkg-old"
[ "$(ct sha256sum /etc/gatewayd/conf.d/00-identity.yaml)" = "$identity_sum" ] || fail "identity rewritten"
[ "$(ct cat "$STATE/systemd-check-survives")" = kept ] || fail "a file in $STATE is lost"
[ "$(ct stat -c %i "$STATE/outbox.db")" = "$outbox_inode" ] || fail "outbox.db was replaced"
read -r after_upgrade drops < <(stats records drops)
[ "$drops" = "{}" ] && [ "$after_upgrade" -ge "$before_upgrade" ] ||
	fail "outbox: $before_upgrade records before the upgrade, $after_upgrade after, drops $drops"
# The broker logs every PUBLISH it receives; the outbox deletes a record only on its PUBACK and
# sends a device's records in order, so once the oldest record is younger than the upgrade,
# every record buffered before it has been delivered.
printf 'log_type all\n' >"$merged/etc/mosquitto/conf.d/systemd-check.conf"
broker_started=$(now)
ct systemctl start mosquitto.service
delivered() {
	read -r n age < <(stats records oldest_age_s)
	[ "$n" = 0 ] || [ "$age" = null ] || le "$age" "$(since "$upgrade_started")"
}
wait_for 60 "the records buffered before the upgrade delivered" delivered
deliver_s=$(since "$broker_started")
received=$(ct grep -c "Received PUBLISH from .*/telemetry'" /var/log/mosquitto/mosquitto.log || true)
# Records appended after the upgrade may still be on their way: those held before it must be in.
[ "$received" -ge "$before_upgrade" ] ||
	fail "the broker received $received telemetry messages, the outbox held $before_upgrade before the upgrade"
ok "upgrade $version -> ${version}+systemdcheck1 in $upgrade_s s while running: started once (pid" \
	"$old -> $(main_pid)), no failed start; $CONFIG edit and node id kept, no .dpkg-dist;" \
	"outbox.db (same inode) $before_upgrade records before, $after_upgrade after, none dropped;" \
	"broker started: those held before the upgrade delivered within $deliver_s s" \
	"($received telemetry PUBLISHes received)"
warned=$(warnings_after "$c1" | grep -v -e '^uplink unavailable: broker 127.0.0.1' \
	-e '^gatewayd.service: Watchdog timeout' -e '^gatewayd.service: Main process exited, code=killed, status=6/ABRT' \
	-e "^gatewayd.service: Failed with result 'watchdog'" || true)
[ -z "$warned" ] || fail "unexpected warnings in journalctl -u gatewayd: $warned"
ok "journal: no warning beyond the absent broker's and the watchdog kill's"

# --- 7. remove and purge ------------------------------------------------------------------
step "7. remove keeps configuration and state; purge removes them"
uid=$(ct id -u gatewayd)
ct apt-get remove -y -qq gatewayd >"$run/remove.log" 2>&1 || fail "remove: $(tail -n 20 "$run/remove.log")"
[ "$(prop LoadState)" = not-found ] || fail "gatewayd.service still loaded after remove: $(prop LoadState)"
[ ! -e "$merged/lib/systemd/system/gatewayd.service" ] || fail "the unit file is left after remove"
if ct pgrep -u gatewayd >/dev/null; then fail "processes of gatewayd left after remove"; fi
[ -f "$merged$STATE/outbox.db" ] && [ -f "$merged$CONFIG" ] || fail "remove deleted the state or the configuration"
ct apt-get purge -y -qq gatewayd >"$run/purge.log" 2>&1 || fail "purge: $(tail -n 20 "$run/purge.log")"
for path in "$STATE" /etc/gatewayd /opt/venvs/gatewayd /usr/bin/gatewayd /lib/systemd/system/gatewayd.service \
	/etc/systemd/system/multi-user.target.wants/gatewayd.service; do
	if [ -e "$merged$path" ] || [ -L "$merged$path" ]; then fail "$path is left after purge"; fi
done
owned=$(ct find / -xdev -uid "$uid" -not -path '/proc/*' -print 2>/dev/null | head -n 5)
[ -z "$owned" ] || fail "files of uid $uid left after purge: $owned"
# Documented in operations.md ("Uninstall"): a purge removes the system account too.
if ct getent passwd gatewayd >/dev/null; then fail "the gatewayd account is left after purge"; fi
ok "remove: unit gone (LoadState=not-found), no process, $STATE and $CONFIG kept;" \
	"purge: $STATE, /etc/gatewayd, the virtualenv and the unit gone, no file of uid $uid;" \
	"the gatewayd account removed"

printf '\nsystemd-check: OK: %s under systemd in %s s (exposure %s, watchdog kill %s s, stop %s s)\n' \
	"$(basename "$deb")" "$((SECONDS - stage_started))" "$exposure" "$killed_after" "$stop_s"
