#!/usr/bin/env bash
# CI's install test, run as root after `make package` on a Debian 12 machine without a
# terminal (and without systemd as PID 1):
#   1. apt-get install ./dist/roguewatch_*.deb, and check what it installed;
#   2. systemd-analyze verify the installed unit, print systemd-analyze security (offline);
#   3. start /usr/bin/roguewatchd --quiet in the background; wait until `roguewatch status`
#      answers (the first start compiles the probes);
#   4. one agent session with `roguewatch run --policy P` (P allows 127.0.0.1/32 only) that
#      connects to 127.0.0.9: it must use the running service, and `roguewatch tail` must show
#      the service's egress_unauthorized_destination alert from /var/log/roguewatch/alerts.jsonl;
#   5. stop roguewatchd (SIGTERM) and check nothing of it is left running;
#   6. apt-get remove: nothing may be left but /etc/roguewatch and /var/log/roguewatch (and
#      the logrotate conffile, which dpkg keeps with the configuration until purge);
#   7. apt-get purge: those are gone too.
# Exits non-zero with a message at the first failed check. STARTUP_TIMEOUT (30 s) bounds step 3;
# MAX_EXPOSURE, when set, fails step 2 if systemd-analyze's exposure score is above it.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
export DEBIAN_FRONTEND=noninteractive
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-30}
tmp=$(mktemp -d /tmp/roguewatch-ci.XXXXXX)
daemon_pid=""
unit=/lib/systemd/system/roguewatchd.service

say() { echo "ci-install-test: $*"; }
step() { echo; echo "ci-install-test: == $*"; }
fail() {
    echo "ci-install-test: FAIL: $*" >&2
    if [ -s "$tmp/roguewatchd.log" ]; then
        echo "ci-install-test: roguewatchd's output:" >&2
        tail -n 40 "$tmp/roguewatchd.log" >&2
    fi
    exit 1
}

stop_daemon() {
    [ -n "$daemon_pid" ] || return 0
    if kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid"
        for _ in $(seq 1 150); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -KILL "$daemon_pid" 2>/dev/null
            wait "$daemon_pid" 2>/dev/null
            daemon_pid=""
            return 1
        fi
    fi
    wait "$daemon_pid" 2>/dev/null
    daemon_status=$?
    daemon_pid=""
}
cleanup() {
    stop_daemon || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# pids of processes running the package's interpreter (roguewatchd and its components)
venv_pids() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
        case $cmd in /opt/roguewatch/venv/bin/python*) echo "${p#/proc/}" ;; esac
    done
}

[ "$(id -u)" = 0 ] || fail "run me as root"
mapfile -t debs < <(ls dist/roguewatch_*.deb 2>/dev/null)
[ ${#debs[@]} -eq 1 ] || fail "expected one dist/roguewatch_*.deb, found ${#debs[@]} (make package)"
deb=${debs[0]}
version=$(dpkg-deb -f "$deb" Version)

# --- 1. install ------------------------------------------------------------------------------
step "install ./$deb"
[ -z "$(venv_pids)" ] || fail "a roguewatch of the package is already running: $(venv_pids)"
if dpkg-query -W -f='${Status}' roguewatch 2>/dev/null | grep -q "ok installed"; then
    # Left by an earlier run on this machine (one that failed before its purge): this test
    # is of a fresh install, so it starts from none.
    say "roguewatch is installed already: purging it first"
    apt-get purge -y roguewatch 2>&1 | sed 's/^/    /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "apt-get purge of the installed roguewatch failed"
fi
apt-get install -y "./$deb" 2>&1 | tee "$tmp/install.log" | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "apt-get install ./$deb failed"
[ "$(dpkg-query -W -f='${Status}' roguewatch 2>/dev/null)" = "install ok installed" ] ||
    fail "roguewatch is not 'install ok installed' after apt-get install"
grep -q "roguewatch: checking this host" "$tmp/install.log" || fail "postinst did not run doctor"

for f in /usr/bin/roguewatch /usr/bin/roguewatchd /opt/roguewatch/venv/bin/python "$unit" \
    /etc/logrotate.d/roguewatch /usr/share/bash-completion/completions/roguewatch \
    /usr/share/man/man1/roguewatch.1.gz /usr/share/man/man8/roguewatchd.8.gz \
    /usr/share/doc/roguewatch/roguewatchd.yaml.example; do
    [ -e "$f" ] || fail "$f was not installed"
done
for d in /etc/roguewatch:755 /etc/roguewatch/rules.d:755 /etc/roguewatch/policies.d:700 \
    /var/lib/roguewatch:700 /var/log/roguewatch:750 /var/cache/roguewatch:700; do
    [ -d "${d%:*}" ] || fail "postinst did not create ${d%:*}"
    mode=$(stat -c %a "${d%:*}")
    [ "$mode" = "${d#*:}" ] || say "note: ${d%:*} has mode $mode (expected ${d#*:} when new)"
done
[ ! -e /etc/roguewatch/roguewatchd.yaml ] || say "note: /etc/roguewatch/roguewatchd.yaml exists (local)"
got=$(/usr/bin/roguewatch --version) || fail "roguewatch --version failed"
[ "$got" = "roguewatch $version" ] || fail "roguewatch --version says '$got', package is $version"
/usr/bin/roguewatchd --version >/dev/null || fail "roguewatchd --version failed"
/opt/roguewatch/venv/bin/python -c 'import bcc, roguewatch.stream.collector, zmq, re2, systemd.daemon' ||
    fail "the package's venv cannot import bcc (python3-bpfcc) or its dependencies"
for page in /usr/share/man/man1/roguewatch.1.gz /usr/share/man/man8/roguewatchd.8.gz; do
    gzip -t "$page" || fail "$page is not a valid gzip file"
    if command -v groff >/dev/null; then
        zcat "$page" | groff -man -Tutf8 -ww -z 2>&1 | grep . && fail "groff warns about $page"
    fi
done
bash -c 'source /usr/share/bash-completion/completions/roguewatch &&
         complete -p roguewatch && complete -p roguewatchd' >/dev/null ||
    fail "the bash completion does not load"
if command -v logrotate >/dev/null; then
    logrotate -d /etc/logrotate.d/roguewatch > "$tmp/logrotate.log" 2>&1 ||
        { cat "$tmp/logrotate.log"; fail "logrotate rejects /etc/logrotate.d/roguewatch"; }
fi
[ -z "$(venv_pids)" ] || fail "installing started roguewatch processes: $(venv_pids)"
if [ -d /run/systemd/system ]; then
    ! systemctl is-active --quiet roguewatchd || fail "installing started roguewatchd"
    ! systemctl is-enabled --quiet roguewatchd || fail "installing enabled roguewatchd"
fi
say "installed roguewatch $version; not started, not enabled"

# --- 2. the unit -----------------------------------------------------------------------------
step "systemd-analyze verify $unit"
if ! command -v systemd-analyze >/dev/null; then
    fail "systemd-analyze not found (apt-get install systemd)"
fi
systemd-analyze verify "$unit" > "$tmp/verify.log" 2>&1
rc=$?
sed 's/^/    /' "$tmp/verify.log"
[ $rc -eq 0 ] || fail "systemd-analyze verify $unit failed"
grep -qi "roguewatchd" "$tmp/verify.log" && fail "systemd-analyze verify reported problems in the unit"
say "verify: ok"
step "systemd-analyze security roguewatchd.service --offline=true"
systemd-analyze security roguewatchd.service --offline=true --no-pager > "$tmp/security.log" 2>&1
rc=$?
cat "$tmp/security.log"
score=$(sed -n 's/.*Overall exposure level for roguewatchd.service: \([0-9.]*\).*/\1/p' "$tmp/security.log")
[ -n "$score" ] || fail "systemd-analyze security gave no exposure score (exit $rc)"
say "exposure score: $score"
if [ -n "${MAX_EXPOSURE:-}" ] && awk "BEGIN { exit !($score > $MAX_EXPOSURE) }"; then
    fail "exposure score $score is above MAX_EXPOSURE=$MAX_EXPOSURE"
fi

# --- 3. the service --------------------------------------------------------------------------
step "start /usr/bin/roguewatchd --quiet (not under systemd)"
started=$(date +%s.%N)
/usr/bin/roguewatchd --quiet > "$tmp/roguewatchd.log" 2>&1 < /dev/null &
daemon_pid=$!
answered=""
deadline=$(( $(date +%s) + STARTUP_TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$daemon_pid" 2>/dev/null || { daemon_pid=""; fail "roguewatchd exited while starting"; }
    /usr/bin/roguewatch status > "$tmp/status.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 1 ]; then answered=$rc; break; fi
    sleep 0.5
done
[ -n "$answered" ] || fail "roguewatch status did not answer within ${STARTUP_TIMEOUT} s"
say "roguewatch status answered after $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s:"
sed 's/^/    /' "$tmp/status.log"
sed 's/^/    roguewatchd: /' "$tmp/roguewatchd.log"
if [ "$answered" = 1 ]; then
    # Just started: the evaluator's first status report may still be on its way.
    sleep 2
    /usr/bin/roguewatch status > "$tmp/status.log" 2>&1 ||
        { cat "$tmp/status.log"; fail "roguewatch status: the service is degraded"; }
fi

# --- 4. one agent session --------------------------------------------------------------------
step "roguewatch run: an agent that connects to 127.0.0.9 (policy: 127.0.0.1/32 only)"
cat > "$tmp/policy.yaml" <<'EOF'
mode: enforce
egress:
  allow: [127.0.0.1/32]
EOF
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 1 # --since has a resolution of one second
port=$(( 40000 + RANDOM % 20000 ))
agent="import socket; s = socket.socket(); s.settimeout(3); print('agent: connect to 127.0.0.9:$port ->', s.connect_ex(('127.0.0.9', $port)))"
timeout 120 /usr/bin/roguewatch run --policy "$tmp/policy.yaml" --name ci-egress --json \
    -- python3 -c "$agent" > "$tmp/run.out" 2> "$tmp/run.err"
rc=$?
sed 's/^/    /' "$tmp/run.out" "$tmp/run.err"
[ $rc -ne 124 ] || fail "roguewatch run did not end within 120 s"
[ $rc -ne 2 ] || fail "roguewatch run failed to set up the session (exit 2)"
grep -q '^roguewatch: session ended' "$tmp/run.err" || fail "roguewatch run printed no summary"
# The alert roguewatch run received must be the service's: same id in the service's file.
run_alert=$(grep '"rule": *"egress_unauthorized_destination"' "$tmp/run.err" | head -n 1)
[ -n "$run_alert" ] || fail "roguewatch run reported no egress_unauthorized_destination alert"
alert_id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$run_alert")
session=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["session"])' "$run_alert")
say "roguewatch run: alert $alert_id in session $session"

step "roguewatch tail --since $since"
/usr/bin/roguewatch tail --since "$since" > "$tmp/tail.txt" 2>&1 || fail "roguewatch tail failed"
sed 's/^/    /' "$tmp/tail.txt"
grep -q egress_unauthorized_destination "$tmp/tail.txt" ||
    fail "roguewatch tail does not show the egress_unauthorized_destination alert"
/usr/bin/roguewatch tail --json --since "$since" --session "$session" > "$tmp/tail.json" 2>&1 ||
    fail "roguewatch tail --json failed"
python3 - "$tmp/tail.json" "$alert_id" <<'EOF' || fail "the service's alert file does not hold the run's alert"
import json, sys
alerts = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
hit = [a for a in alerts if a.get("id") == sys.argv[2]]
assert hit and hit[0]["rule"] == "egress_unauthorized_destination", alerts
assert "127.0.0.9" in json.dumps(hit[0]), hit[0]
EOF
grep -q "\"id\":\"$alert_id\"" /var/log/roguewatch/alerts.jsonl ||
    fail "alert $alert_id is not in /var/log/roguewatch/alerts.jsonl: the run did not use the service"
say "the run used the running service: its alert $alert_id is in /var/log/roguewatch/alerts.jsonl"

# --- 5. stop ---------------------------------------------------------------------------------
step "stop roguewatchd (SIGTERM)"
daemon_status=""
stop_daemon || fail "roguewatchd did not stop within 30 s of SIGTERM (killed)"
[ "$daemon_status" = 0 ] || fail "roguewatchd exited with status $daemon_status on SIGTERM"
sleep 0.5
[ -z "$(venv_pids)" ] || fail "processes of roguewatch still running after stop: $(venv_pids)"
say "stopped; nothing of it left running"

# --- 6. remove -------------------------------------------------------------------------------
listing=$tmp/files
# directories end in "/" in the listing; /lib and others may be symlinks on this system
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|' | grep -v '^/$' > "$listing"
step "apt-get remove -y roguewatch"
apt-get remove -y roguewatch 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "apt-get remove roguewatch failed"
left=()
while read -r f; do
    [ "$f" = /etc/logrotate.d/roguewatch ] && continue # a conffile: kept until purge
    case $f in
        */) # a directory: only the package's own must go
            f=${f%/}
            case $f in /opt/roguewatch* | */roguewatch) [ -e "$f" ] && left+=("$f") ;; esac ;;
        *) { [ -L "$f" ] || [ -e "$f" ]; } && left+=("$f") ;;
    esac
done < "$listing"
for d in /opt/roguewatch /var/lib/roguewatch /var/cache/roguewatch /run/roguewatch \
    /sys/fs/bpf/roguewatch; do
    [ -e "$d" ] && left+=("$d")
done
[ ${#left[@]} -eq 0 ] || fail "left after remove: ${left[*]}"
[ -d /etc/roguewatch ] || fail "remove deleted /etc/roguewatch (it must keep the configuration)"
[ -d /var/log/roguewatch ] || fail "remove deleted /var/log/roguewatch (it must keep the logs)"
[ -f /var/log/roguewatch/alerts.jsonl ] || fail "remove deleted the alert file"
say "removed: kept $(find /etc/roguewatch /var/log/roguewatch /etc/logrotate.d/roguewatch | tr '\n' ' ')"

# --- 7. purge --------------------------------------------------------------------------------
step "apt-get purge -y roguewatch"
apt-get purge -y roguewatch 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "apt-get purge roguewatch failed"
for f in /etc/roguewatch /var/log/roguewatch /etc/logrotate.d/roguewatch; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
status=$(dpkg-query -W -f='${Status}' roguewatch 2>/dev/null || true)
[ -z "$status" ] || [ "$status" = "unknown ok not-installed" ] ||
    fail "dpkg still knows roguewatch after purge: $status"
say "purged: nothing of roguewatch is left"

echo
say "PASS (roguewatch $version; exposure score $score)"
