#!/usr/bin/env bash
# Calibrate the step model on this GPU and hold it against real decoder layers (issue 23).
#
# REHEARSED ON CPU ONLY (--cpu): as committed, this script has not yet run on a GPU. The CUDA path runs the
# same commands without --device cpu --quick; the first GPU run should be read with that in mind.
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [--models "llama3-8b llama2-13b"] [--cpu] [--no-report]
#
# What it does, from a checkout of hetero-sched on a machine that has Python 3.12 and torch (CUDA) but no
# package registry:
#   1. installs what the machine lacks from wheels brought along (--wheels, default ./wheels): hetero-sched
#      itself and its dependencies, pip --no-index (nothing is fetched; torch is kept as it is). flash-attn is
#      installed too when its wheel is in the folder (profile and check-model then time it instead of SDPA);
#   2. hetero-sched profile --model <first model> -> OUT/calibration-<first model>.json;
#   3. hetero-sched check-model --model M --calibration that file -> OUT/check-M.json, for every model (the first
#      is the calibration's own shape, the others are holdouts priced with the same calibration);
#   4. python benchmarks/gpu_report.py OUT -> benchmarks/results/gpu_<yyyymmdd>.md.
# Everything it writes lands in OUT (default gpu_check_<yyyymmdd>), logs included; copy OUT back, and commit
# the report and OUT/calibration-llama3-8b.json as models/<gpu>/calibration-llama3-8b.json with its provenance.
#
# --cpu: the rehearsal. Same install and report steps, check-model --device cpu --quick (every width / 8):
# the first model's check profiles that reduced shape itself (what `profile` would time at the true shapes takes
# minutes on a CPU), the holdout reuses its calibration; the report goes to OUT/gpu_rehearsal_<yyyymmdd>.md.
#
# Preparing the wheels (on any machine with the registry, from this checkout):
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       -d wheels "ortools>=9.10" "pulp>=2.8,<4" "highspy>=1.7" "numpy>=1.26" "pandas>=2.0" "rich>=13" \
#       "jsonschema>=4"
#   pip wheel --no-deps -w wheels .          # hetero-sched itself (a pure-Python wheel)
#   # optional: a flash-attn wheel built for the GPU machine's torch and CUDA, copied into wheels/
# (the dependency list is pyproject.toml's [project] dependencies; keep the two in step.)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
WHEELS="wheels"
OUT="gpu_check_$(date +%Y%m%d)"
MODELS="llama3-8b llama2-13b"
CPU=0
REPORT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --no-report) REPORT=0; shift ;;
    -h|--help) sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
case "$WHEELS" in /*) ;; *) WHEELS="$PWD/$WHEELS" ;; esac
cd "$OUT"  # never the checkout: its bare hetero_sched/ folder would shadow the installed package
LOG="$OUT/log.txt"
say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# ---- 0. what this machine is ------------------------------------------------------------------------------
"$PY" - <<'EOF' || { echo "gpu_check.sh: $PY cannot import torch; this machine needs torch first" >&2; exit 2; }
import torch  # noqa: F401
EOF
if [ "$CPU" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device visible to torch (use --cpu for the rehearsal)" >&2; exit 2
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm)"
  "$PY" -c "import platform, torch; print('python', platform.python_version()); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  fi
  echo "checkout: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$OUT/environment.txt"
say "environment: $(tr '\n' ';' < "$OUT/environment.txt")"

# ---- 1. install what is missing, from the wheels only ------------------------------------------------------
if "$PY" -c "import hetero_sched.check_model" 2>/dev/null; then
  say "hetero-sched is already importable: nothing installed"
else
  [ -d "$WHEELS" ] || { echo "gpu_check.sh: no wheels folder $WHEELS (see the header: pip download ...)" >&2; exit 2; }
  say "installing hetero-sched from $WHEELS (no index)"
  # PIP_ARGS: e.g. --user, or --break-system-packages where the system Python is marked externally managed
  "$PY" -m pip install ${PIP_ARGS:-} --no-index --find-links "$WHEELS" hetero-sched >> "$LOG" 2>&1 \
    || { echo "gpu_check.sh: pip could not install from $WHEELS; see $LOG" >&2; exit 2; }
fi
if [ "$CPU" = 0 ] && ! "$PY" -c "import flash_attn" 2>/dev/null && ls "$WHEELS"/flash_attn-*.whl >/dev/null 2>&1; then
  say "installing flash-attn from $WHEELS"
  "$PY" -m pip install ${PIP_ARGS:-} --no-index --find-links "$WHEELS" --no-deps flash-attn >> "$LOG" 2>&1 || say "flash-attn did not install: SDPA is timed"
fi
HS=("$PY" -m hetero_sched.cli)

# ---- 2 and 3. profile, then check every model with the same calibration ------------------------------------
set -- $MODELS
FIRST="$1"
CALIB="$OUT/calibration-$FIRST.json"
if [ "$CPU" = 1 ]; then
  DEV=(--device cpu --quick)
  say "check-model $FIRST (CPU rehearsal: profiles the reduced shape into $CALIB)"
  "${HS[@]}" check-model --model "$FIRST" "${DEV[@]}" --save-calibration "$CALIB" --out "$OUT/check-$FIRST.json" 2>&1 | tee -a "$LOG"
  shift
else
  DEV=(--device cuda)
  say "profile $FIRST -> $CALIB"
  "${HS[@]}" profile --model "$FIRST" "${DEV[@]}" --out "$CALIB" 2>&1 | tee -a "$LOG"
fi
for M in "$@"; do
  say "check-model $M with $CALIB"
  "${HS[@]}" check-model --model "$M" "${DEV[@]}" --calibration "$CALIB" --out "$OUT/check-$M.json" 2>&1 | tee -a "$LOG"
done

# ---- 4. the report ------------------------------------------------------------------------------------------
if [ "$REPORT" = 1 ]; then
  if [ "$CPU" = 1 ]; then
    "$PY" "$HERE/gpu_report.py" "$OUT" --speedup-batches 1 --time-limit 1 2>&1 | tee -a "$LOG"
  else
    "$PY" "$HERE/gpu_report.py" "$OUT" 2>&1 | tee -a "$LOG"
  fi
fi
say "done: results in $OUT"
