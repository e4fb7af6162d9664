#!/bin/bash
# The test inside the systemd VM (tests/systemd-vm/run.sh puts it at
# /usr/local/lib/cella-vm/test.sh; cella-vm-test.service runs it after
# multi-user.target, with its output on the serial console).
#
# Boot 1: install the package as a user would, create certificates, start the units,
# launch a long task and run steps 1-6, then record the task and reboot.
# Boot 2: step 7 (the task of the previous boot is reported LOST, nothing is left),
# then purge the package and power off.
#
# Every check prints one line that the harness counts:
#   CELLA-SYSTEMD-VM: PASS <label>: <what was seen>
#   CELLA-SYSTEMD-VM: FAIL <label>: <what went wrong>
# Each boot ends with "CELLA-SYSTEMD-VM-PHASE: <n> <reboot|poweroff>" and the second
# (or a first that cannot go on) with "CELLA-SYSTEMD-VM-RESULT: <p> passed, <f> failed".
# shellcheck disable=SC2317 # helpers called through wait_until look unreachable
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The cluster's CA lives in /etc/cella/tls on this one machine; the command-line
# tool uses the certificate of the user admin issued from it.
CA=/etc/cella/tls
export CELLA_MASTER=https://127.0.0.1:5050 CELLA_TLS_DIR=$CA/users/admin
# The test-only trigger that hangs the agent's work loop (step 5).
HANG_TRIGGER=/run/cella/agent/test-hang-work-loop

STATE=/var/lib/cella-vm
LOGS=/var/log/cella-vm
mkdir -p "$STATE" "$LOGS"
phase=$(cat "$STATE/phase" 2>/dev/null || echo 1)

# The probe task: a little CPU every second (so that its usage visibly grows), and
# it ends on SIGTERM like a well-behaved service (as PID 1 of its pid namespace it
# would otherwise ignore it, and hold up the shutdown of step 7 by 90 s).
# shellcheck disable=SC2016 # expanded by the task's shell
PROBE='trap "exit 143" TERM; while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 1; done'

say() { echo "CELLA-SYSTEMD-VM: $*"; }
log() { echo "cella-vm: $*"; }
# The time since boot ends every check's line: the harness's timings.
uptime_s() { cut -d. -f1 /proc/uptime; }
pass() {
    say "PASS $1: $2 [t=$(uptime_s)s]"
    echo "PASS $1" >> "$STATE/results"
}
fail() {
    say "FAIL $1: $2 [t=$(uptime_s)s]"
    echo "FAIL $1" >> "$STATE/results"
    diagnose
}

# What a person needs to see when a check fails: the units' state, the end of their
# journals and the cgroups of the agent's unit.
diagnose() {
    echo "----- diagnostics -----"
    systemctl status --no-pager --lines=0 cella-master.service cella-agent.service 2>&1 | head -n 30
    journalctl -b --no-pager -o short-monotonic -n 25 -u cella-agent.service -u cella-master.service 2>&1
    systemd-cgls --no-pager /system.slice/cella-agent.service /cella.slice 2>&1 | head -n 30
    echo "-----------------------"
}

# wait_until SECONDS COMMAND...: polls COMMAND once a second until it succeeds.
wait_until() {
    local limit=$1 end
    shift
    end=$((SECONDS + limit))
    until "$@"; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 1
    done
}

main_pid() { systemctl show -P MainPID "$1" 2>/dev/null || echo 0; }
is_active() { systemctl is-active --quiet "$1"; }
# Why UNIT is not active: its state, result, exit status and its last error (or
# last log line).
unit_why() {
    local lines last
    lines=$(journalctl -b --no-pager -o cat -n 30 _SYSTEMD_UNIT="$1.service" 2> /dev/null)
    last=$(grep -i -E 'error|fatal|panic' <<< "$lines" | tail -n 1)
    [ -n "$last" ] || last=$(tail -n 1 <<< "$lines")
    echo "$1 is $(systemctl is-active "$1") (result $(systemctl show -P Result "$1"), exit status $(systemctl show -P ExecMainStatus "$1"); its last log line: '${last:-none}')"
}
# unit_usec UNIT PROPERTY: a time property in microseconds (empty if not finite).
unit_usec() {
    systemd-analyze timespan "$(systemctl show -P "$2" "$1")" 2> /dev/null \
        | sed -n 's/^ *μs: \([0-9][0-9]*\)$/\1/p'
}
# wait_active UNIT SECONDS: until UNIT is active; gives up early once it failed.
wait_active() {
    local end=$((SECONDS + $2)) state
    while :; do
        state=$(systemctl is-active "$1")
        case "$state" in
            active) return 0 ;;
            failed) return 1 ;;
        esac
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 1
    done
}
# The start time of a process (field 22 of /proc/PID/stat, after the command name).
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
task_get() {
    cella tasks --all --json 2>/dev/null | jq -r --arg id "$1" ".[] | select(.id == \$id) | $2" 2>/dev/null
}
task_state() { task_get "$1" .state; }
task_cpu_ns() { task_get "$1" '((.usage.cpu_user_ns // 0) + (.usage.cpu_system_ns // 0))'; }
is_state() { [ "$(task_state "$1")" = "$2" ]; }
cpu_above() { local now; now=$(task_cpu_ns "$1"); [ -n "$now" ] && [ "$now" -gt "$2" ]; }
agent_connected() {
    [ "$(cella agents --json 2>/dev/null | jq -r '[.[] | select(.state == "CONNECTED")] | length')" = 1 ]
}
# A journal line of UNIT since the timestamp SINCE that matches PATTERN.
journal_has() {
    journalctl -b --no-pager -o cat -u "$1" --since "$2" 2>/dev/null | grep -q -- "$3"
}
now_stamp() { date '+%Y-%m-%d %H:%M:%S'; }

# launch NAME MARKER: starts the probe task; sets TASK_ID, TASK_PID, TASK_START.
launch() {
    local out err
    err=$(mktemp)
    TASK_ID=
    TASK_PID=
    TASK_START=
    if ! out=$(timeout 180 cella run --detach --name "$1" -- sh -c "$PROBE" "$2" 2> "$err"); then
        LAUNCH_ERROR="cella run failed: $(tail -n 3 "$err" | tr '\n' ' ')"
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
    TASK_ID=$(echo "$out" | tail -n 1)
    if ! wait_until 30 pgrep -o -f "$2\$" > /dev/null; then
        LAUNCH_ERROR="task $TASK_ID is RUNNING but no process of it ($2) was found"
        return 1
    fi
    TASK_PID=$(pgrep -o -f "$2\$")
    TASK_START=$(start_time "$TASK_PID")
    log "task $TASK_ID: pid $TASK_PID (start time $TASK_START)"
}

# The checks after every event the task must survive; they append to REASONS.
# same_task: the very same process (pid and start time) still runs.
same_task() {
    if [ "$(start_time "$TASK_PID")" != "$TASK_START" ]; then
        REASONS+=("the task's process $TASK_PID is gone or replaced")
        return 1
    fi
}
task_running_in_master() {
    if ! wait_until 90 is_state "$TASK_ID" RUNNING; then
        REASONS+=("the master shows the task $(task_state "$TASK_ID" || true) instead of RUNNING")
        return 1
    fi
}
usage_flowing() {
    local before
    before=$(task_cpu_ns "$TASK_ID")
    if [ -z "$before" ] || ! wait_until 45 cpu_above "$TASK_ID" "$before"; then
        REASONS+=("the task's CPU time in the master stayed at ${before:-none} ns for 45 s")
        return 1
    fi
}
# unit_back UNIT OLD_PID SECONDS: a new main process runs and the unit is active.
unit_back() {
    replaced() { is_active "$1" && [ "$(main_pid "$1")" != 0 ] && [ "$(main_pid "$1")" != "$2" ]; }
    if ! wait_until "$3" replaced "$1" "$2"; then
        REASONS+=("$1 is $(systemctl is-active "$1") with main pid $(main_pid "$1") (was $2)")
        return 1
    fi
}
agent_back() { unit_back cella-agent "$1" "$2"; }
# What systemd said about the agent since SINCE, for the reasons of a failure.
agent_journal_reasons() {
    if journal_has cella-agent "$1" "stop-sigterm' timed out"; then
        REASONS+=("the agent did not exit within TimeoutStopSec after SIGTERM: systemd killed it with SIGKILL")
    fi
    if journal_has cella-agent "$1" "status=219/CGROUP"; then
        REASONS+=("systemd could not put the new agent into its unit's cgroup (219/CGROUP: that cgroup has controllers enabled for the tasks below it)")
    fi
    if journal_has cella-agent "$1" "start operation timed out"; then
        REASONS+=("the agent never said READY=1 within TimeoutStartSec")
    fi
}
task_survived() {
    same_task
    task_running_in_master && usage_flowing
}
# unit_ctl VERB UNIT SECONDS: systemctl VERB UNIT.service within SECONDS; a failure
# is one of the REASONS.
unit_ctl() {
    timeout "$3" systemctl "$1" "$2.service" || REASONS+=("systemctl $1 $2 failed (exit $?)")
}
# agent_step_report SINCE LABEL DETAIL: after the agent was stopped or replaced, the
# task survived, then what systemd said about the agent since SINCE, then the line.
agent_step_report() {
    task_survived
    agent_journal_reasons "$1"
    report "$2" "$3"
}
# report LABEL DETAIL: PASS with DETAIL if REASONS is empty, FAIL with the reasons.
report() {
    if [ "${#REASONS[@]}" -eq 0 ]; then
        pass "$1" "$2"
    else
        local IFS=';'
        fail "$1" "${REASONS[*]}"
    fi
}

finish() { # $1 = reboot | poweroff
    journalctl -b --no-pager -o short-monotonic > "$LOGS/journal-boot$phase.txt" 2>&1
    if [ "$1" = poweroff ]; then
        local p f
        p=$(grep -c '^PASS' "$STATE/results" 2>/dev/null)
        f=$(grep -c '^FAIL' "$STATE/results" 2>/dev/null)
        echo "CELLA-SYSTEMD-VM-RESULT: ${p:-0} passed, ${f:-0} failed"
    fi
    echo "CELLA-SYSTEMD-VM-PHASE: $phase $1"
    sync
    # Through the target: `systemctl reboot` would first try logind over D-Bus,
    # which this minimal system does not run.
    systemctl --no-block start "$1.target"
    exit 0
}

# Boot 1 cannot go on: the checks from $1 on get their line ("not run: $2"), the
# package is purged (that check does not need the rest) and the VM powers off.
abort_phase1() {
    local labels=(task-oom-score task-cgroup-journal 1-restart 2-stop-start 3-kill-9 4-task-killed 5-watchdog
        6-master-restart package-upgrade 7-reboot)
    local l skip=1
    for l in "${labels[@]}"; do
        [ "$l" = "$1" ] && skip=0
        [ "$skip" = 1 ] && continue
        say "FAIL $l: not run: $2"
        echo "FAIL $l" >> "$STATE/results"
    done
    package_purge
    finish poweroff
}

# ---------------------------------------------------------------------------
phase1_setup() {
    log "boot 1: systemd $(systemctl --version | head -n 1 | cut -d' ' -f2), kernel $(uname -r)," \
        "cgroup: $(stat -fc %T /sys/fs/cgroup)"

    # The package, installed the way the README says, without a network.
    local deb
    deb=$(ls /root/cella-vm/cella_*.deb)
    if apt-get install -y -q --no-install-recommends "$deb" > "$LOGS/apt-install.txt" 2>&1; then
        pass package-install "apt-get install $(basename "$deb") (offline)"
    else
        cat "$LOGS/apt-install.txt"
        fail package-install "apt-get install $(basename "$deb") failed"
        abort_phase1 task-oom-score "the package did not install"
    fi

    REASONS=()
    local f
    for f in cella cella-agent cella-master cella-shim; do
        [ -x "/usr/bin/$f" ] || REASONS+=("/usr/bin/$f missing")
    done
    [ "$(getent passwd cella | cut -d: -f7)" = /usr/sbin/nologin ] || REASONS+=("no system user cella with /usr/sbin/nologin")
    check_dir() { # path mode owner
        [ "$(stat -c '%a %U' "$1" 2>/dev/null)" = "$2 $3" ] \
            || REASONS+=("$1 is '$(stat -c '%a %U' "$1" 2>&1)', want '$2 $3'")
    }
    check_dir /var/lib/cella/master 700 cella
    check_dir /var/lib/cella/agent 700 root
    check_dir /run/cella/agent 700 root
    for f in /etc/cella/agent.toml /etc/cella/master.toml; do
        dpkg-query -W -f='${Conffiles}\n' cella | grep -q " $f " || REASONS+=("$f is not a conffile")
    done
    for f in cella-agent cella-master; do
        [ "$(systemctl is-enabled "$f" 2>&1)" = disabled ] || REASONS+=("$f is $(systemctl is-enabled "$f" 2>&1), not disabled")
        is_active "$f" && REASONS+=("$f was started by the installation")
    done
    report package-layout "binaries in /usr/bin, user cella, state dirs 0700, two conffiles, units installed disabled and stopped"

    local out
    if out=$(systemd-analyze verify cella-agent.service cella-master.service 2>&1) && [ -z "$out" ]; then
        pass units-verify "systemd-analyze verify: no complaint"
    else
        fail units-verify "systemd-analyze verify: $(echo "$out" | tr '\n' ' ')"
    fi
    local score
    score=$(systemd-analyze security --no-pager cella-master.service 2>/dev/null \
        | sed -n 's/.*Overall exposure level for cella-master.service: \([0-9.]*\).*/\1/p')
    log "systemd-analyze security cella-agent.service: $(systemd-analyze security --no-pager cella-agent.service 2>/dev/null | tail -n 1)"
    if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
        pass master-security "systemd-analyze security cella-master: $score (at most 3.0)"
    else
        fail master-security "systemd-analyze security cella-master: ${score:-no score} (want at most 3.0)"
    fi

    # A cluster on this machine, as the README says: the CA and the master's
    # certificate, this node's agent certificate (its bundle copied into the agent's
    # TLS directory) and a user's.
    if ! out=$(cella certs init "$CA" 2>&1 \
            && cella certs issue agent "$(hostname)" --dir "$CA" 2>&1 \
            && install -m 0644 "$CA/agents/$(hostname)/agent.pem" "$CA/agent.pem" \
            && install -m 0600 "$CA/agents/$(hostname)/agent-key.pem" "$CA/agent-key.pem" \
            && cella certs issue user admin --dir "$CA" 2>&1); then
        fail setup "cella certs init / issue: $out"
        abort_phase1 task-oom-score "no certificates"
    fi
    # Test only: the agent's work loop hangs when $HANG_TRIGGER appears (step 5).
    mkdir -p /etc/systemd/system/cella-agent.service.d
    printf '[Service]\nEnvironment=CELLA_AGENT_TEST_HANG_WORK_LOOP=%s\n' "$HANG_TRIGGER" \
        > /etc/systemd/system/cella-agent.service.d/test-hang.conf
    systemctl daemon-reload
    systemctl enable cella-master.service cella-agent.service 2> /dev/null
    systemctl start --no-block cella-master.service cella-agent.service
    REASONS=()
    wait_active cella-master 150 || REASONS+=("$(unit_why cella-master)")
    wait_active cella-agent 150 || REASONS+=("$(unit_why cella-agent)")
    if [ "${#REASONS[@]}" -eq 0 ] && ! wait_until 60 agent_connected; then
        REASONS+=("the master shows no connected agent")
    fi
    if [ "${#REASONS[@]}" -eq 0 ] && ! launch probe1 cella-vm-probe-1; then
        REASONS+=("$LAUNCH_ERROR")
    fi
    if [ "${#REASONS[@]}" -ne 0 ]; then
        local IFS=';'
        fail setup "${REASONS[*]}"
        abort_phase1 task-oom-score "the setup failed"
    fi
    pass setup "certificates, both units enabled and active, the agent connected, task $TASK_ID running as pid $TASK_PID"

    # The agent keeps itself from the OOM killer; its tasks must not inherit that.
    local agent_adj task_adj
    agent_adj=$(cat "/proc/$(main_pid cella-agent)/oom_score_adj" 2>/dev/null)
    task_adj=$(cat "/proc/$TASK_PID/oom_score_adj" 2>/dev/null)
    if [ "$agent_adj" = -900 ] && [ "$task_adj" = 0 ]; then
        pass task-oom-score "oom_score_adj: agent -900, task 0"
    else
        fail task-oom-score "oom_score_adj: agent ${agent_adj:-?} (want -900), task ${task_adj:-?} (want 0)"
    fi

    # Where the task lives: its own scope in cella.slice, not the agent's unit; and
    # the agent's journal lines about it carry its id as a field.
    REASONS=()
    local cg
    cg=$(sed -n 's/^0:://p' "/proc/$TASK_PID/cgroup")
    [ "$cg" = "/cella.slice/cella-task-$TASK_ID.scope/task" ] \
        || REASONS+=("the task is in the cgroup $cg, not /cella.slice/cella-task-$TASK_ID.scope/task")
    local lines
    lines=$(journalctl -b --no-pager -o cat -u cella-agent "TASK_ID=$TASK_ID" 2>/dev/null | wc -l)
    [ "$lines" -gt 0 ] || REASONS+=("journalctl -u cella-agent TASK_ID=$TASK_ID shows nothing")
    journalctl -b --no-pager -o verbose -u cella-agent "TASK_ID=$TASK_ID" 2>/dev/null \
        | grep -q '^ *FRAMEWORK_ID=' || REASONS+=("the task's journal lines carry no FRAMEWORK_ID")
    report task-cgroup-journal "task in $cg; journalctl -u cella-agent TASK_ID=$TASK_ID: $lines lines, with FRAMEWORK_ID"
}

step1_restart() {
    REASONS=()
    local old since t0
    old=$(main_pid cella-agent)
    since=$(now_stamp)
    t0=$SECONDS
    unit_ctl restart cella-agent 240
    agent_back "$old" 60
    agent_step_report "$since" 1-restart "systemctl restart cella-agent took $((SECONDS - t0)) s; task pid $TASK_PID kept running, RUNNING in the master, usage growing"
}

step2_stop_start() {
    REASONS=()
    local old since
    old=$(main_pid cella-agent)
    since=$(now_stamp)
    unit_ctl stop cella-agent 120
    same_task
    # Past a few of the master's pings (every 5 s).
    sleep 16
    same_task
    unit_ctl start cella-agent 240
    agent_back "$old" 60
    agent_step_report "$since" 2-stop-start "stopped for 16 s and started again; task pid $TASK_PID kept running, RUNNING in the master, usage growing"
}

step3_kill9() {
    REASONS=()
    local old since restarts
    old=$(main_pid cella-agent)
    restarts=$(systemctl show -P NRestarts cella-agent)
    since=$(now_stamp)
    kill -KILL "$old"
    agent_back "$old" 120
    [ "$(systemctl show -P NRestarts cella-agent)" -gt "$restarts" ] \
        || REASONS+=("systemd did not count a restart (NRestarts stayed $restarts)")
    agent_step_report "$since" 3-kill-9 "agent pid $old killed with SIGKILL, systemd restarted it as pid $(main_pid cella-agent); task pid $TASK_PID recovered"
}

step4_task_killed() {
    REASONS=()
    kill -KILL "$TASK_PID"
    if wait_until 90 is_state "$TASK_ID" FAILED; then
        local signal
        signal=$(task_get "$TASK_ID" .signal)
        [ "$signal" = 9 ] || REASONS+=("FAILED with signal ${signal:-none}, want 9")
    else
        REASONS+=("the master shows $(task_state "$TASK_ID") instead of FAILED")
    fi
    report 4-task-killed "task $TASK_ID FAILED, signal 9: $(task_get "$TASK_ID" .message)"
}

step5_watchdog() {
    REASONS=()
    local old since wd_us abort_us
    old=$(main_pid cella-agent)
    wd_us=$(unit_usec cella-agent WatchdogUSec)
    abort_us=$(unit_usec cella-agent TimeoutAbortUSec)
    if [ "${wd_us:-0}" = 0 ] || [ -z "$abort_us" ] || [ "${#abort_us}" -gt 12 ]; then
        # Stopping the agent now would only make the master give it up.
        fail 5-watchdog "cella-agent has no watchdog or no finite abort timeout (WatchdogSec=$(systemctl show -P WatchdogUSec cella-agent), TimeoutAbortSec=$(systemctl show -P TimeoutAbortUSec cella-agent))"
        return
    fi
    since=$(now_stamp)
    # The agent's work loop hangs (the rest of the agent goes on): only the
    # watchdog, pinged from that loop, can tell.
    touch "$HANG_TRIGGER"
    # The watchdog, the abort timeout (SIGABRT, then SIGKILL) and a start.
    if agent_back "$old" $(((wd_us + abort_us) / 1000000 + 60)); then
        journal_has cella-agent "$since" "Watchdog timeout" \
            || REASONS+=("the agent was replaced, but not by the watchdog")
        journal_has cella-agent "$since" "the work loop hangs now" \
            || REASONS+=("the agent never saw the test trigger $HANG_TRIGGER")
        task_survived
    else
        REASONS+=("the agent with a hung work loop was not restarted")
    fi
    rm -f "$HANG_TRIGGER"
    agent_journal_reasons "$since"
    report 5-watchdog "agent pid $old: its work loop hung; the watchdog ($((wd_us / 1000000)) s) had it restarted as pid $(main_pid cella-agent); task pid $TASK_PID recovered"
}

step6_master_restart() {
    REASONS=()
    local agent master
    agent=$(main_pid cella-agent)
    master=$(main_pid cella-master)
    unit_ctl restart cella-master 240
    unit_back cella-master "$master" 60
    wait_until 60 agent_connected || REASONS+=("the agent did not reconnect to the restarted master")
    [ "$(main_pid cella-agent)" = "$agent" ] || REASONS+=("the agent was restarted too (pid $agent -> $(main_pid cella-agent))")
    task_survived
    report 6-master-restart "master pid $master -> $(main_pid cella-master); agent pid $agent untouched, task pid $TASK_PID RUNNING, usage growing"
}

# An upgrade (the same package again): the daemons restart on the new binaries, the
# task keeps running, an edited conffile is kept.
package_upgrade() {
    REASONS=()
    local agent master deb since
    agent=$(main_pid cella-agent)
    master=$(main_pid cella-master)
    since=$(now_stamp)
    echo "# edited by the administrator" >> /etc/cella/agent.toml
    deb=$(ls /root/cella-vm/cella_*.deb)
    if ! dpkg -i "$deb" > "$LOGS/dpkg-upgrade.txt" 2>&1; then
        REASONS+=("dpkg -i $(basename "$deb") failed: $(tail -n 3 "$LOGS/dpkg-upgrade.txt" | tr '\n' ' ')")
    fi
    grep -q '^# edited by the administrator' /etc/cella/agent.toml || REASONS+=("the edited /etc/cella/agent.toml was replaced")
    unit_back cella-master "$master" 240
    agent_back "$agent" 240
    agent_step_report "$since" package-upgrade "dpkg -i over the installed package restarted both daemons; task pid $TASK_PID kept running, RUNNING, usage growing; the edited conffile kept"
}

phase1() {
    : > "$STATE/results"
    phase1_setup
    step1_restart
    step2_stop_start
    step3_kill9
    step4_task_killed
    # A new task for the rest: the first one has just been killed.
    if ! launch probe2 cella-vm-probe-2; then
        abort_phase1 5-watchdog "$LAUNCH_ERROR"
    fi
    step5_watchdog
    step6_master_restart
    package_upgrade
    printf '%s %s %s\n' "$TASK_ID" "$TASK_PID" "$TASK_START" > "$STATE/task"
    echo 2 > "$STATE/phase"
    log "rebooting with task $TASK_ID running"
    finish reboot
}

# ---------------------------------------------------------------------------
step7_after_reboot() {
    REASONS=()
    read -r TASK_ID TASK_PID TASK_START < "$STATE/task"
    log "boot 2: looking for task $TASK_ID (pid $TASK_PID in boot 1)"
    wait_active cella-master 150 || REASONS+=("after the reboot $(unit_why cella-master)")
    wait_active cella-agent 150 || REASONS+=("after the reboot $(unit_why cella-agent)")
    local state='' reason='' message='' updated=''
    if wait_until 120 is_state "$TASK_ID" LOST; then
        reason=$(task_get "$TASK_ID" .reason)
        message=$(task_get "$TASK_ID" .message)
        updated=$(task_get "$TASK_ID" .updated_ns)
        case "$message" in
            *reboot*) ;;
            *) REASONS+=("LOST ($reason) without the reboot as reason: '$message'") ;;
        esac
        # Reported once: no later update changes it.
        sleep 10
        [ "$(task_get "$TASK_ID" .updated_ns)" = "$updated" ] && is_state "$TASK_ID" LOST \
            || REASONS+=("the task's status changed again after LOST: $(task_state "$TASK_ID")")
    else
        state=$(task_state "$TASK_ID")
        REASONS+=("the master shows the task ${state:-nowhere} instead of LOST")
    fi
    # Nothing left of it: no process, no cgroup, no run directory.
    pgrep -f 'cella-vm-probe-2$' > /dev/null && REASONS+=("a process of the task runs after the reboot")
    local left
    left=$(find /sys/fs/cgroup -name "*$TASK_ID*" 2> /dev/null | head -n 3 | tr '\n' ' ')
    [ -z "$left" ] || REASONS+=("cgroups left: $left")
    [ -e "/run/cella/agent/tasks/$TASK_ID" ] && REASONS+=("run directory left: /run/cella/agent/tasks/$TASK_ID")
    report 7-reboot "task $TASK_ID LOST ($reason) once: '$message'; no process, cgroup or run directory left"
}

# Purge removes what the installation created and keeps what the docs name.
package_purge() {
    REASONS=()
    if ! apt-get purge -y -q cella > "$LOGS/apt-purge.txt" 2>&1; then
        REASONS+=("apt-get purge cella failed: $(tail -n 3 "$LOGS/apt-purge.txt" | tr '\n' ' ')")
    fi
    local p
    for p in /usr/bin/cella /usr/bin/cella-agent /usr/lib/systemd/system/cella-agent.service \
        /etc/cella/agent.toml /etc/cella/master.toml /var/lib/cella/master /var/lib/cella/agent/meta \
        /run/cella /etc/systemd/system/multi-user.target.wants/cella-agent.service; do
        [ -e "$p" ] && REASONS+=("$p is still there")
    done
    getent passwd cella > /dev/null && REASONS+=("the user cella is still there")
    [ -d /etc/cella/tls ] || REASONS+=("/etc/cella/tls (the cluster's keys) was removed")
    grep -q 'kept /etc/cella/tls' "$LOGS/apt-purge.txt" || REASONS+=("purge did not say it kept /etc/cella/tls")
    pgrep -x cella-agent > /dev/null && REASONS+=("cella-agent still runs")
    report package-purge "removed binaries, units, conffiles, registry, checkpoint, run dirs, user; kept and named /etc/cella/tls"
}

phase2() {
    step7_after_reboot
    package_purge
    echo 3 > "$STATE/phase"
    finish poweroff
}

case "$phase" in
    1) phase1 ;;
    2) phase2 ;;
    *)
        log "phase $phase: the test already ran on this disk"
        finish poweroff
        ;;
esac
