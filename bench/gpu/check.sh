#!/usr/bin/env bash
# The GPU check: one command for the lent GPU machine, everything it writes under $OUT.
#
# Here (CPU, seconds; what CI runs through tests/test_gpu_check.py):
#     bench/gpu/check.sh --cpu --tiny
# There, after bench/gpu/pack.sh here, through the device tool:
#     run(command="bench/gpu/check.sh", carry=[".gpu/carry"], timeout_s=540)
#
# Stages, each under its own `timeout` and with its own log ($OUT/STAGE.log), so a stage that hangs or fails
# still leaves the others' files:
#   env        nvidia-smi, torch's device name, the resources Ray sees     -> env.log
#   throughput bench/throughput.py --device cuda, short budget             -> throughput.json
#              (+ one stage per optional throughput.py flag it offers: OPTIONAL_THROUGHPUT_FLAGS)
#   pong       tuned_examples/drqn_pong.yaml, GPU learner, nproc-1 env runners, fixed wall
#              budget (bench/gpu/pong_curve.py)  -> pong/{curve.csv,curve.png,summary.json}
#   flicker    the same for drqn_flickering_pong.yaml, if the total budget leaves time
# and check.json (every stage's exit status and seconds) at the end.
#
# Options:
#   --cpu    no GPU: skip nvidia-smi, learners on the CPU, use this machine's Python env
#            ($PYTHON, default .venv/bin/python) instead of unpacking .gpu/carry.
#   --tiny   budgets of seconds (throughput --smoke, training runs of a few seconds).
# Environment: OUT (default bench/out/gpu-check), GPU_DIR (where pack.sh packed; default .gpu),
# TOTAL_S (the whole check's budget; default 480 s, so a 540 s device call returns in time).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CPU=0
TINY=0
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        --tiny) TINY=1 ;;
        -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "check.sh: unknown option '$arg'; use --cpu and/or --tiny." >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/bench/out/gpu-check}"
mkdir -p "$OUT"
START=$SECONDS
TOTAL_S="${TOTAL_S:-480}"

# Flags that later versions of bench/throughput.py add (issue 11: async vs sync loop; issue
# 15: vectorized acting). Each one that `throughput.py --help` lists runs as its own stage;
# the others are skipped. Adding a stage is adding its flag here.
OPTIONAL_THROUGHPUT_FLAGS=(--async-vs-sync --vector-acting)
# Their budgets on the device (--tiny uses --smoke alone): Pong with 8 remote runners, async
# against sync (issue 11), and the acting path at 16 and 32 envs per runner (issue 15).
declare -A OPTIONAL_ARGS=(
    [--async-vs-sync]="--async-seconds 15 --async-envs FlickeringAtari --async-runners 8"
    [--vector-acting]="--steps 500 --vector-num-envs 16 32"
)
# With --tiny: one env and one runner, so the script is exercised without a 3-minute stage.
declare -A TINY_OPTIONAL_ARGS=(
    [--async-vs-sync]="--async-envs StatelessCartPole --async-runners 1"
)

if ((TINY)); then
    THROUGHPUT_ARGS=(--smoke)
    # Generous bounds: about 90 s in all on 2 idle cores, but 7 minutes at load 20 was seen.
    THROUGHPUT_TIMEOUT=400
    OPTIONAL_TIMEOUT=400
    PONG_S=6
    FLICKER_S=4
    TRAIN_SLACK=300  # Ray and Tune start-up, the build and the final checkpoint, on 2 cores.
    ENV_TIMEOUT=300
    BUDGET=tiny
else
    THROUGHPUT_ARGS=(--iterations 10 --seconds 60 --steps 1000)
    THROUGHPUT_TIMEOUT=150
    OPTIONAL_TIMEOUT=90
    PONG_S=120
    FLICKER_S=60  # The least worth starting; it gets whatever TOTAL_S leaves.
    TRAIN_SLACK=60
    ENV_TIMEOUT=120
    BUDGET=gpu
fi

if ((CPU)); then
    DEVICE=cpu
    GPUS_PER_LEARNER=0
    PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$PYTHON" ]] || PYTHON=python3
else
    DEVICE=cuda
    GPUS_PER_LEARNER=1
    PYTHON="${PYTHON:-python3}"
    TARBALL="${GPU_DIR:-$ROOT/.gpu}/carry/site.tar.xz"
    if [[ ! -f "$TARBALL" ]]; then
        echo "check.sh: $TARBALL is missing: run bench/gpu/pack.sh on the networked machine and" \
            "pass carry=['.gpu/carry'] to the device run (or use --cpu here)." >&2
        exit 2
    fi
    SITE="$(mktemp -d)/site"
    mkdir -p "$SITE"
    echo "== unpacking $(du -h "$TARBALL" | cut -f1) into $SITE"
    tar xJf "$TARBALL" -C "$SITE" || { echo "check.sh: could not unpack $TARBALL" >&2; exit 2; }
    # Byte-compile once, on every core: the wheels hold no .pyc, and a cold import of Ray's
    # dashboard agent in every new Ray node was seen to outlast the raylet's wait for it
    # (raylet: "Timed out waiting for file .../metrics_agent_port_...") on a loaded CPU here.
    "$PYTHON" -m compileall -q -j 0 "$SITE" >/dev/null 2>&1 || echo "compileall failed (ignored)"
    # The working tree first: its rllib_drqn wins over the packed copy.
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# Ray's workers inherit PYTHONPATH; the tree must be importable there too (--cpu with an
# editable install has it anyway).
export PYTHONPATH="${PYTHONPATH:-$ROOT}"
export RAY_AIR_NEW_OUTPUT=0 PYTHONUNBUFFERED=1
NPROC="$(nproc)"
ENV_RUNNERS=$((NPROC > 2 ? NPROC - 1 : 1))  # One core for the trial's driver and learner.

STATUS_LINES=()
# stage NAME TIMEOUT_S CMD...: runs CMD (a program or a function below) under `timeout`, which
# signals its whole process group (Ray's workers included), logs to $OUT/NAME.log and records
# the status.
stage() {
    local name="$1" limit="$2"
    shift 2
    local began=$SECONDS
    echo "== [$((SECONDS - START)) s] stage $name (timeout ${limit} s)"
    timeout --kill-after=15 "$limit" bash -c '"$@"' stage "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - began))
    local verdict=ok
    ((rc == 124 || rc == 137)) && verdict=timeout
    ((rc != 0 && rc != 124 && rc != 137)) && verdict=failed
    echo "   $name: $verdict (exit $rc) after $took s; log $OUT/$name.log"
    ((rc != 0)) && tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    STATUS_LINES+=("\"$name\": {\"status\": \"$verdict\", \"exit\": $rc, \"seconds\": $took}")
    return $rc
}

left() { echo $((TOTAL_S - (SECONDS - START))); }

environment() {
    if ((!CPU)); then
        nvidia-smi || echo "nvidia-smi failed"
    fi
    "$PYTHON" - <<'PY'
import os, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__,
      "| cuda available", torch.cuda.is_available(),
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
import gymnasium, ale_py, ray, rllib_drqn
print("ray", ray.__version__, "| gymnasium", gymnasium.__version__, "| ale_py", ale_py.__version__)
print("rllib_drqn from", os.path.dirname(rllib_drqn.__file__))
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
print("ray sees", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
ray.shutdown()
PY
}

# train NAME TUNED_EXAMPLE SECONDS: prepare, train for SECONDS of Tune time, report.
train() {
    local name="$1" example="$2" seconds="$3" dir="$OUT/$1"
    rm -rf "$dir"
    "$PYTHON" bench/gpu/pong_curve.py prepare "$example" --out "$dir" --budget "$BUDGET" \
        --num-env-runners "$ENV_RUNNERS" --num-gpus-per-learner "$GPUS_PER_LEARNER" || return 2
    timeout --kill-after=15 $((seconds + TRAIN_SLACK)) \
        "$PYTHON" -m rllib_drqn train file "$dir/experiment.yaml" --storage-path "$dir/results" \
        --num-env-runners "$ENV_RUNNERS" --num-gpus-per-learner "$GPUS_PER_LEARNER" \
        --stop "{\"time_total_s\": $seconds}"
    local rc=$?
    # Reads only the saved result.json, so a killed run still gets its curve.
    "$PYTHON" bench/gpu/pong_curve.py report "$dir" --training-exit-status "$rc" || return 1
    return $rc
}

# `timeout` runs programs, so the functions and what they read travel through the environment.
export -f environment train
export CPU BUDGET PYTHON OUT ENV_RUNNERS GPUS_PER_LEARNER TRAIN_SLACK

stage env "$ENV_TIMEOUT" environment
cat "$OUT/env.log"

stage throughput "$THROUGHPUT_TIMEOUT" "$PYTHON" bench/throughput.py --device "$DEVICE" \
    "${THROUGHPUT_ARGS[@]}" --out "$OUT/throughput.json"

HELP="$("$PYTHON" bench/throughput.py --help 2>/dev/null)"
for flag in "${OPTIONAL_THROUGHPUT_FLAGS[@]}"; do
    name="throughput${flag#-}"
    if ! grep -q -- "$flag\b" <<<"$HELP"; then
        echo "   (throughput.py offers no $flag yet: stage skipped)"
    elif ((!TINY && $(left) < OPTIONAL_TIMEOUT + PONG_S + TRAIN_SLACK)); then
        # The Pong curve is the check's main number: an optional stage only runs when it
        # still leaves the Pong stage its budget.
        echo "   $name: skipped, $(left) s left of TOTAL_S=$TOTAL_S"
        STATUS_LINES+=("\"$name\": {\"status\": \"skipped\", \"exit\": null, \"seconds\": 0}")
    else
        # shellcheck disable=SC2206  # the per-flag budget is a list of words
        if ((TINY)); then
            extra=(${TINY_OPTIONAL_ARGS[$flag]:-})
        else
            extra=(${OPTIONAL_ARGS[$flag]:-})
        fi
        stage "$name" "$OPTIONAL_TIMEOUT" "$PYTHON" bench/throughput.py --device "$DEVICE" \
            "${THROUGHPUT_ARGS[@]}" "$flag" "${extra[@]}" --out "$OUT/$name.json"
    fi
done

stage pong $((PONG_S + TRAIN_SLACK + 60)) train pong tuned_examples/drqn_pong.yaml "$PONG_S"

remaining=$(left)
if ((TINY || remaining >= FLICKER_S + TRAIN_SLACK)); then
    flicker_s=$FLICKER_S
    ((!TINY)) && flicker_s=$((remaining - TRAIN_SLACK))
    stage flicker $((flicker_s + TRAIN_SLACK + 60)) \
        train flicker tuned_examples/drqn_flickering_pong.yaml "$flicker_s"
else
    echo "   flicker: skipped, $remaining s left of TOTAL_S=$TOTAL_S"
    STATUS_LINES+=("\"flicker\": {\"status\": \"skipped\", \"exit\": null, \"seconds\": 0}")
fi

joined="$(printf '%s, ' "${STATUS_LINES[@]}")"
printf '{"device": "%s", "budget": "%s", "env_runners": %d, "total_s": %d, "stages": {%s}}\n' \
    "$DEVICE" "$BUDGET" "$ENV_RUNNERS" $((SECONDS - START)) "${joined%, }" >"$OUT/check.json"
echo "== done in $((SECONDS - START)) s; everything is in $OUT (check.json lists the stages)"
for run in pong flicker; do
    [[ -f "$OUT/$run/summary.json" ]] && echo "-- $run:" && "$PYTHON" -c \
        "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['final']))" \
        "$OUT/$run/summary.json"
done
# Non-zero if any stage did not finish cleanly, so a caller sees it; the files are there anyway.
grep -q '"status": "\(failed\|timeout\)"' "$OUT/check.json" && exit 1
exit 0
