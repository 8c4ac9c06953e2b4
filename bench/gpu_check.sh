#!/usr/bin/env bash
# The GPU check, on a machine with one CUDA GPU, in at most 5 minutes:
#   1. the CUDA tests (`pytest -m cuda`: masks drawn on the GPU, fp16 GradScaler state through a
#      checkpoint, resume == uninterrupted run under train.deterministic, compile on CUDA);
#   2. bench/train_throughput.py (FSRF at MOSI shapes) in bf16 and fp16, eager and compiled;
#   3. bench/models.py (every model eager; FSRF compiled) in bf16 and fp16.
# Every step prints one JSON line: {"run", "status", "seconds", ...}; a bench step adds the bench's
# own figures: samples/s, peak GPU memory torch allocated (gpu_peak_mib_*) and the GPU utilisation
# nvidia-smi sampled every 100 ms during the timed part (gpu_util_*). Steps run in priority order
# under one deadline; a step the deadline cuts reports "timeout", one it leaves no time for
# "skipped". Exit status: 0 when every step passed, 1 otherwise, 2 without a GPU.
#
#   bash bench/gpu_check.sh                 # PYTHON=/path/to/python to choose the interpreter
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
BUDGET_S=290  # 5 minutes, less the start-up and a margin

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "bench/gpu_check.sh: needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False); run it on a machine with one" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null || echo "bench/gpu_check.sh: warning: no nvidia-smi, so no GPU utilisation figures" >&2

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
DEADLINE=$((SECONDS + BUDGET_S))
FAILED=0

# step NAME CAP_S KIND COMMAND...   (KIND: bench = the command prints one JSON line; tests = pytest)
step() {
    local name=$1 cap=$2 kind=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        printf '{"run": "%s", "status": "skipped", "reason": "the 5-minute budget is spent"}\n' "$name"
        FAILED=1
        return
    fi
    local limit=$((cap < left ? cap : left)) start=$SECONDS status rc
    timeout --signal=INT --kill-after=5 "$limit" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 130 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [[ $status == ok ]] || FAILED=1
    "$PYTHON" - "$name" "$status" "$((SECONDS - start))" "$kind" "$TMP/out" "$TMP/err" <<'EOF'
import json, sys
name, status, seconds, kind, out, err = sys.argv[1:]
row = {"run": name, "status": status, "seconds": int(seconds)}
lines = [l for l in open(out).read().splitlines() if l.strip()]
if kind == "bench":
    try:
        row.update(json.loads(lines[-1]))
    except (IndexError, ValueError):
        pass
else:
    row["summary"] = lines[-1] if lines else ""
if status != "ok":
    tail = (open(err).read().strip().splitlines() or lines)[-3:]
    row["error_tail"] = tail
print(json.dumps(row), flush=True)
EOF
}

TT=(bench/train_throughput.py --device cuda --epochs 2 --jsonl)
MODELS=(bench/models.py --device cuda --steps 10 --jsonl)

step "pytest -m cuda" 120 tests "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests/
step "train_throughput bf16" 40 bench "$PYTHON" "${TT[@]}" --precision bf16
step "train_throughput fp16" 40 bench "$PYTHON" "${TT[@]}" --precision fp16
step "train_throughput bf16 compile" 60 bench "$PYTHON" "${TT[@]}" --precision bf16 --compile
step "train_throughput fp16 compile" 60 bench "$PYTHON" "${TT[@]}" --precision fp16 --compile
step "models bf16" 40 bench "$PYTHON" "${MODELS[@]}" --precision bf16
step "models fp16" 40 bench "$PYTHON" "${MODELS[@]}" --precision fp16
step "models fsrf bf16 compile" 45 bench "$PYTHON" "${MODELS[@]}" --precision bf16 --compile --models fsrf
step "models fsrf fp16 compile" 45 bench "$PYTHON" "${MODELS[@]}" --precision fp16 --compile --models fsrf
exit $FAILED
