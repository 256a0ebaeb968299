#!/usr/bin/env bash
# GPU readiness check (needs a CUDA device; at most 9.5 minutes: the five parts have 100 + 140 + 150 + 100 + 70 s
# limits):
#   1. the GPU tests (pytest -m gpu: CUDA purification equals CPU, bf16 on CUDA, noise on the device, no
#      host-device sync in a reverse step or a PGD iteration);
#   2. benchmarks/gpu_throughput.py (#25): image-UNet-calls/s of the study's attack gradient and defended
#      prediction (DiffPure v2, FreqPure official v2; fp32/bf16; both noise schemes) against the bare ε-model floor;
#   3. the same at the study's target size (batch 256, FreqPure official v2, bf16, counter-v1), eager against
#      torch.compile with CUDA graphs (mode reduce-overhead; #25 item 5: keep what wins);
#   4. the two throughput benchmarks on CUDA, fp32 against bf16 (attack gradient, purification);
#   5. a 64-image purification with the published NCSN++ and ADM architectures (random weights).
# Every number goes to $OUT (default gpu_check/), summary in $OUT/summary.txt; copy it into
# benchmarks/RESULTS.md ("GPU").
#   bash scripts/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to do" >&2
    exit 2
fi
START=$(date +%s)
status=0
{
    echo "# gpu_check $(date -u +%FT%TZ)"
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}')"
    nproc | sed 's/^/cpu cores: /'
    uptime
} > "$OUT/summary.txt"

run() {  # run NAME TIMEOUT CMD...: log to $OUT/NAME.txt, note the outcome in the summary
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc, $(( $(date +%s) - t0 )) s" >> "$OUT/summary.txt"
    [ $rc -eq 0 ] || status=1
}

run gpu_tests 100 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
run gpu_throughput 140 "$PY" benchmarks/gpu_throughput.py --device cuda --batch 64 --json "$OUT/gpu_throughput.json"
run gpu_compile 150 "$PY" benchmarks/gpu_throughput.py --device cuda --batch 256 --methods freqpure-official-v2 \
    --precisions bf16 --schemes counter-v1 --compile none,reduce-overhead --json "$OUT/gpu_compile.json"
run throughput 100 "$PY" benchmarks/precision_speed.py --device cuda --variants fp32,bf16,bf16-cl --repeats 2 \
    --purify-rounds "100:5;1000:100" --purify-n 64 --purify-batch 64 --json "$OUT/throughput.json"
run architectures 70 "$PY" benchmarks/gpu_arch_purify.py --device cuda --n 64 --batch 16 --rounds 100:5 \
    --json "$OUT/architectures.json"

{
    echo
    tail -n 3 "$OUT/gpu_tests.txt"
    echo
    grep -A 20 "^## gpu_throughput" "$OUT/gpu_throughput.txt"
    echo
    grep -A 8 "^## gpu_throughput" "$OUT/gpu_compile.txt"
    echo
    grep -A 6 "^## " "$OUT/throughput.txt"
    echo
    cat "$OUT/architectures.txt"
    echo
    echo "total: $(( $(date +%s) - START )) s"
} >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $status
