#!/usr/bin/env bash
# SVD's restart, measured whole in one device call (a fresh machine has nothing saved):
#   1. save the full-size random-weight model to /tmp/m (a download's stand-in);
#   2. a first start on an empty cache: eager first clip, compile + save landscape, a compiled clip;
#   3. restarts with the graphs step 2 saved (--restarts N, default 2), seconds since process start;
#   4. with --profile: one more restart under cProfile (restart.prof) and the imports' times.
# Usage (on the GPU machine, after installing diffusers): bash bench/svd_restart.sh [--profile] [--restarts N]
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/svd-restart}
mkdir -p "$out"
profile=0 restarts=2
while [ $# -gt 0 ]; do
    case $1 in
    --profile) profile=1 ;;
    --restarts) restarts=$2; shift ;;
    esac
    shift
done
B="python3 -W ignore bench/logged.py bench/backend_check.py"
R="--restart --one-orientation --model-dir /tmp/m --cache-dir /tmp/c"
$B --save-model /tmp/m --out "$out/save.json" >"$out/save.log" 2>&1 || echo "save failed"
BENCH_T0=$(date +%s.%N) timeout 300 $B $R --budget-s 280 --out "$out/first_start.json" \
    >"$out/first_start.log" 2>&1 || echo "first start ended with $?"
for i in $(seq 1 "$restarts"); do
    BENCH_T0=$(date +%s.%N) timeout 80 $B $R --budget-s 15 --out "$out/restart$i.json" \
        >"$out/restart$i.log" 2>&1 || echo "restart $i ended with $?"
done
if [ "$profile" = 1 ]; then
    BENCH_T0=$(date +%s.%N) timeout 120 python3 -W ignore -m cProfile -o "$out/restart.prof" \
        bench/backend_check.py $R --budget-s 1 --out "$out/restart_profiled.json" \
        >"$out/restart_profiled.log" 2>&1 || echo "profiled restart ended with $?"
    python3 -X importtime -c "import bench.backend_check; import diffusers; from diffusers import StableVideoDiffusionPipeline" \
        2>"$out/importtime.txt" >/dev/null
fi
python3 - "$out" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    print(f.name, r.get("since_start_s"), {k: r.get(k) for k in ("first_clip", "second_clip", "compile_s", "compile_errors", "graphs_loaded", "graphs_saved")})
PY
