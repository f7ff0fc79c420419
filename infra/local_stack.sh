#!/usr/bin/env bash
# A one-machine stand-in for the cluster: a two-node Ray (head + one worker), a Prefect server and an MLflow
# server, all bound to 127.0.0.1 on free ports. Used by tests/flows/test_deploy.py; see infra/README.md.
#
#   infra/local_stack.sh start [STATE_DIR]    # prints the env file to source; default STATE_DIR: .state/stack
#   infra/local_stack.sh status [STATE_DIR]
#   infra/local_stack.sh stop [STATE_DIR]     # kills only the process groups this script started
#   BEIT3_STACK_SERVICES=ray infra/local_stack.sh start [STATE_DIR]   # the two-node Ray alone
#
# Every service runs in its own session (setsid), so its process group holds it and its children (Ray's
# gcs_server, raylet, workers); `stop` signals exactly those groups, recorded in STATE_DIR/pids. It never calls
# `ray stop`, which would kill every Ray on the machine.
set -euo pipefail

COMMAND=${1:-}
STATE=$(mkdir -p "${2:-${BEIT3_STACK_DIR:-.state/stack}}" && cd "${2:-${BEIT3_STACK_DIR:-.state/stack}}" && pwd)
PYTHON=${PYTHON:-python3}
BIN=$(dirname "$(command -v "$PYTHON")")
TIMEOUT=${BEIT3_STACK_TIMEOUT:-150}
SERVICES=" ${BEIT3_STACK_SERVICES:-ray prefect mlflow} "  # Ray always starts; Prefect and MLflow when listed

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

spawn() {  # spawn NAME COMMAND...: run in a new session, log to logs/NAME.log, record the group id
  local name=$1
  shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
}

wait_for() {  # wait_for WHAT COMMAND...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "local_stack: $what not ready after ${TIMEOUT}s; logs in $STATE/logs" >&2
      return 1
    fi
    sleep 1
  done
}

http_ok() { "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1"; }

ray_nodes() {  # ray_nodes ADDRESS N: true once N nodes are alive
  RAY_ADDRESS=$1 "$PYTHON" - "$2" <<'PY'
import sys

import ray

ray.init(log_to_driver=False, logging_level="ERROR")
alive = [n for n in ray.nodes() if n["Alive"]]
sys.exit(0 if len(alive) >= int(sys.argv[1]) else 1)
PY
}

start() {
  if [[ -f "$STATE/env" ]]; then
    echo "local_stack: already started (state in $STATE); stop it first" >&2
    exit 1
  fi
  mkdir -p "$STATE/pids" "$STATE/logs"
  local ray_port prefect_port mlflow_port ray_tmp
  ray_port=$(free_port)
  prefect_port=$(free_port)
  mlflow_port=$(free_port)
  # Ray's unix socket paths must stay under 107 bytes, so its session folder cannot live in a deep STATE.
  ray_tmp=$(mktemp -d /tmp/b3ray.XXXXXX)
  echo "$ray_tmp" >"$STATE/ray_tmp"
  export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

  spawn ray-head "$BIN/ray" start --head --block --port="$ray_port" --node-ip-address=127.0.0.1 \
    --num-cpus=1 --object-store-memory=200000000 --include-dashboard=false --disable-usage-stats \
    --temp-dir="$ray_tmp"
  if [[ $SERVICES == *" prefect "* ]]; then
    PREFECT_HOME="$STATE/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_API_URL= \
      spawn prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$prefect_port"
  fi
  if [[ $SERVICES == *" mlflow "* ]]; then
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false spawn mlflow "$BIN/mlflow" server --host 127.0.0.1 \
      --port "$mlflow_port" --backend-store-uri "sqlite:///$STATE/mlflow.db" \
      --artifacts-destination "$STATE/mlartifacts" --workers 1
  fi

  wait_for "Ray head" ray_nodes "127.0.0.1:$ray_port" 1
  spawn ray-worker "$BIN/ray" start --block --address="127.0.0.1:$ray_port" --num-cpus=1 \
    --object-store-memory=150000000
  wait_for "Ray worker" ray_nodes "127.0.0.1:$ray_port" 2
  local env="export RAY_ADDRESS=127.0.0.1:$ray_port"$'\n'"export RAY_AUTH_MODE=disabled"$'\n'
  if [[ $SERVICES == *" prefect "* ]]; then
    wait_for "Prefect server" http_ok "http://127.0.0.1:$prefect_port/api/health"
    env+="export PREFECT_API_URL=http://127.0.0.1:$prefect_port/api"$'\n'
  fi
  if [[ $SERVICES == *" mlflow "* ]]; then
    wait_for "MLflow server" http_ok "http://127.0.0.1:$mlflow_port/health"
    env+="export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port"$'\n'
  fi
  printf '%s' "$env" >"$STATE/env"  # written last: its presence means every service is up
  echo "$STATE/env"
}

status() {
  [[ -f "$STATE/env" ]] && cat "$STATE/env"
  for pidfile in "$STATE"/pids/*.pid; do
    [[ -e "$pidfile" ]] || continue
    local pid
    pid=$(cat "$pidfile")
    if group_alive "$pid"; then state=running; else state=stopped; fi
    echo "$(basename "$pidfile" .pid) group $pid $state"
  done
}

group_alive() {  # a process group with a member that is not a zombie
  ps -o stat= -g "$1" 2>/dev/null | grep -qv '^Z'
}

stop() {
  local groups=() pid deadline
  for pidfile in "$STATE"/pids/*.pid; do
    [[ -e "$pidfile" ]] && groups+=("$(cat "$pidfile")")
  done
  for pid in "${groups[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 8))  # `ray start --block` does not always exit on SIGTERM: escalate soon
  for pid in "${groups[@]}"; do
    while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
    if group_alive "$pid"; then
      echo "local_stack: group $pid still running 8 s after SIGTERM; sending SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  deadline=$((SECONDS + 10))
  for pid in "${groups[@]}"; do
    while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  done
  [[ -f "$STATE/ray_tmp" ]] && rm -rf "$(cat "$STATE/ray_tmp")" "$STATE/ray_tmp"
  rm -f "$STATE"/pids/*.pid "$STATE/env"
}

case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|status|stop [STATE_DIR]" >&2
    exit 2
    ;;
esac
