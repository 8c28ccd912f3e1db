#!/usr/bin/env bash
# SVD's restart, measured whole in one device call (a fresh machine has nothing saved):
#   1. save the full-size random-weight model to /tmp/m (a download's stand-in);
#   2. a first start on an empty cache: eager first clip, compile + save landscape, a compiled clip;
#   3. restarts with the graphs step 2 saved (--restarts N, default 2), seconds since process start;
#   4. with --profile: one more restart under cProfile (restart.prof) and the imports' times.
# --skip-first reuses /tmp/m and /tmp/c from an earlier run of this script on the same machine;
# --tag T names this run's files; arguments after -- go to each restart (e.g. --load-via-cpu).
# Usage (on the GPU machine, after installing diffusers):
#   bash bench/svd_restart.sh [--profile] [--restarts N] [--skip-first] [--tag T] [-- ARGS]
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/svd-restart}
mkdir -p "$out"
profile=0 restarts=2 first=1 tag=""
while [ $# -gt 0 ]; do
    case $1 in
    --profile) profile=1 ;;
    --restarts) restarts=$2; shift ;;
    --skip-first) first=0 ;;
    --tag) tag="$2-"; shift ;;
    --) shift; break ;;
    esac
    shift
done
B="python3 -W ignore bench/logged.py bench/backend_check.py"
R="--restart --one-orientation --model-dir /tmp/m --cache-dir /tmp/c"
if [ "$first" = 1 ]; then
    $B --save-model /tmp/m --out "$out/save.json" >"$out/save.log" 2>&1 || echo "save failed"
    BENCH_T0=$(date +%s.%N) timeout 300 $B $R --budget-s 280 --out "$out/${tag}first_start.json" \
        >"$out/${tag}first_start.log" 2>&1 || echo "first start ended with $?"
fi
for i in $(seq 1 "$restarts"); do
    BENCH_T0=$(date +%s.%N) timeout 80 $B $R --budget-s 15 "$@" --out "$out/${tag}restart$i.json" \
        >"$out/${tag}restart$i.log" 2>&1 || echo "restart $i ended with $?"
done
if [ "$profile" = 1 ]; then
    BENCH_T0=$(date +%s.%N) timeout 120 python3 -W ignore -m cProfile -o "$out/${tag}restart.prof" \
        bench/backend_check.py $R --budget-s 1 "$@" --out "$out/${tag}restart_profiled.json" \
        >"$out/${tag}restart_profiled.log" 2>&1 || echo "profiled restart ended with $?"
    python3 -X importtime -c "import bench.backend_check; import diffusers; from diffusers import StableVideoDiffusionPipeline" \
        2>"$out/${tag}importtime.txt" >/dev/null
fi
python3 - "$out" "$tag" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob(f"{sys.argv[2]}*.json")):
    r = json.loads(f.read_text())
    clips = {k: {"s": round(r[k]["s"], 2), "first_event": r[k]["stages"][0][1]} for k in ("first_clip", "second_clip") if k in r}
    print(f.name, {k: round(v, 2) for k, v in (r.get("since_start_s") or {}).items()}, clips,
          {k: r.get(k) for k in ("compile_s", "compile_errors", "graphs_loaded", "graphs_saved")})
PY
