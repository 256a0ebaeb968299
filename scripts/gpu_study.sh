#!/usr/bin/env bash
# Run the unfinished parts of the CIFAR-10 study on one CUDA device until a deadline, then pack the records.
#
#   bash scripts/gpu_study.sh --data DIR --out DIR [--minutes 8] [--procs 6] [--study FOLDER]
#
#   --data DIR     folder holding CIFAR-10's test.tar (e.g. a copy of ../shared/data/cifar10 carried along)
#   --out DIR      where the archive of records goes (study-records-<UTC time>.tar.gz) with the logs
#   --minutes M    deadline for the parts (default 8): every part still running is stopped then; a part loses
#                  only the batch it was working on (records are written batch by batch)
#   --procs P      parts run as P parallel processes on the one GPU (default 6: what kept an H200 busy)
#   --study DIR    the study's records to continue (default benchmarks/results/study-cifar10; not modified:
#                  the parts run in a copy)
#
# The parts run in the priority order of issue #21: the primary endpoint first (stage 4 FreqPure official
# and DiffPure at the v2 plan), then stage 3's FreqPure rows, then the rest. Back on the development
# machine, one command merges the archive into the repository's records and rewrites the tables:
#   freqpure study --config configs/study-cifar10.yaml --out benchmarks/results/study-cifar10 --import ARCHIVE
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="" OUT="" MINUTES=8 PROCS=6 STUDY=benchmarks/results/study-cifar10
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --minutes) MINUTES=$2; shift 2 ;;
        --procs) PROCS=$2; shift 2 ;;
        --study) STUDY=$2; shift 2 ;;
        *) echo "gpu_study.sh: unknown argument $1 (see the comment at the top of the script)" >&2; exit 2 ;;
    esac
done
[ -n "$DATA" ] && [ -f "$DATA/test.tar" ] || { echo "gpu_study.sh: --data must name a folder holding test.tar" >&2; exit 2; }
[ -n "$OUT" ] || { echo "gpu_study.sh: --out DIR is required" >&2; exit 2; }
[ -d "$STUDY" ] || { echo "gpu_study.sh: no study records at $STUDY" >&2; exit 2; }
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_study.sh: no CUDA device visible to torch" >&2; exit 2; }

PARTS=(
    stage4-honest-protocol/freqpure-official-v2
    stage4-honest-protocol/diffpure-v2
    stage3-paper-protocol/freqpure-official-v2
    stage3-paper-protocol/freqpure-paper-v2
    stage4-honest-protocol/freqpure-paper-v2
    stage4-honest-protocol/freqpure-paper-v2-full
    stage5-band-limited/diffpure
    stage5-band-limited/freqpure-paper
    stage5-band-limited/freqpure-official
    stage1-clean/diffpure-v2
    stage1-clean/freqpure-official-v2
    stage1-clean/freqpure-paper-v2
    stage1-clean/diffpure-100-5
    stage1-clean/freqpure-paper-100-5
    stage1-clean/freqpure-official-100-5
    stage2-single-round/freqpure-official
    stage3-paper-protocol/freqpure-official-sh
    stage4-honest-protocol/freqpure-official-sh-full
)

WORK=$(mktemp -d)/study-cifar10
cp -r "$STUDY" "$WORK"
rm -f "$WORK"/*/*/.lock
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS="$OUT/gpu-study-$STAMP"
mkdir -p "$LOGS"
{ nvidia-smi || true; "$PY" -c "import torch; print(torch.__version__, torch.version.cuda)"; git rev-parse HEAD; } \
    > "$LOGS/env.txt" 2>&1
nvidia-smi dmon -s um -d 5 > "$LOGS/dmon.txt" 2>&1 &
DMON=$!
END=$(( $(date +%s) + MINUTES * 60 ))

# The primary endpoint's two parts run as RANKS torchrun ranks each on the one GPU (their batches are shared
# out by rank; the ranks meet over gloo), every other part as one process; at most PROCS processes at once.
RANKS=$(( PROCS / 2 > 1 ? PROCS / 2 : 1 ))
declare -A WIDTH=()
used=0
next=0
port=29600
start_part() {
    local part=$1 ranks=$2 left=$(( END - $(date +%s) ))
    [ "$left" -gt 30 ] || return 1
    local log="$LOGS/$(echo "$part" | tr / _).log" cmd=("$PY" -m freqpure)
    if [ "$ranks" -gt 1 ]; then
        port=$(( port + 1 ))
        cmd=("$PY" -m torch.distributed.run --nnodes 1 --nproc-per-node "$ranks" --rdzv-backend c10d
             --rdzv-endpoint "localhost:$port" -m freqpure)
    fi
    echo "$(date -u +%T) start $part on $ranks process(es) (${left}s left)" | tee -a "$LOGS/jobs.txt"
    ( timeout --signal=TERM --kill-after=20 "$left" "${cmd[@]}" study --config configs/study-cifar10.yaml \
          --out "$WORK" --part "$part" --set device=cuda --set "data_dir=$DATA" --no-progress > "$log" 2>&1; \
      echo "$(date -u +%T) $part exit $?" >> "$LOGS/jobs.txt" ) &
    WIDTH[$!]=$ranks
    used=$(( used + ranks ))
    return 0
}
while :; do
    while [ "$next" -lt "${#PARTS[@]}" ]; do
        ranks=1
        [ "$next" -lt 2 ] && ranks=$RANKS
        [ $(( used + ranks )) -le "$PROCS" ] || break
        start_part "${PARTS[$next]}" "$ranks" || { next=${#PARTS[@]}; break; }
        next=$(( next + 1 ))
    done
    [ "${#WIDTH[@]}" -gt 0 ] || break
    wait -n || true
    for pid in "${!WIDTH[@]}"; do  # free the slots of every job that has ended
        if ! kill -0 "$pid" 2>/dev/null; then
            used=$(( used - WIDTH[$pid] ))
            unset "WIDTH[$pid]"
        fi
    done
done
kill "$DMON" 2>/dev/null || true

ARCHIVE="$OUT/study-records-$STAMP.tar.gz"
tar czf "$ARCHIVE" -C "$(dirname "$WORK")" "$(basename "$WORK")" -C "$OUT" "gpu-study-$STAMP"
echo "records packed: $ARCHIVE"
echo "merge them: freqpure study --config configs/study-cifar10.yaml --out benchmarks/results/study-cifar10 --import $ARCHIVE"
