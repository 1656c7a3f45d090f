#!/usr/bin/env bash
# Time one Snakemake invocation and record the machine's load beside it, so that a wall time measured
# on a shared machine says how shared it was. Usage (from the repository root):
#   bash scripts/timed_snakemake.sh sweep            # = .venv/bin/snakemake --cores 2 sweep, timed
#   SNAKEMAKE=/path/to/snakemake bash scripts/timed_snakemake.sh   # the default target
# Prints the wall time, the jobs Snakemake finished, and the 1-minute load average sampled every 10 s
# (mean and max; 2.0 = both cores of a 2-core machine busy). Snakemake's own output: $LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
SNAKEMAKE=${SNAKEMAKE:-.venv/bin/snakemake}
LOG=${LOG:-results/logs/timed_snakemake.log}
mkdir -p "$(dirname "$LOG")"
LOADS=$(mktemp)
(while true; do cut -d' ' -f1 /proc/loadavg >> "$LOADS"; sleep 10; done) &
SAMPLER=$!
trap 'kill "$SAMPLER" 2>/dev/null || true; rm -f "$LOADS"' EXIT
START=$(date +%s.%N)
STATUS=0
"$SNAKEMAKE" --cores 2 "$@" > "$LOG" 2>&1 || STATUS=$?
END=$(date +%s.%N)
JOBS=$(grep -c "^Finished job" "$LOG" || true)
python3 - "$START" "$END" "$JOBS" "$LOADS" "$STATUS" "$*" <<'EOF'
import sys
start, end, jobs, loads, status, target = sys.argv[1:]
wall = float(end) - float(start)
values = [float(x) for x in open(loads).read().split()]
load = f"load average (1 min, every 10 s) mean {sum(values) / len(values):.2f}, max {max(values):.2f}" if values else "no load sample"
print(f"snakemake --cores 2 {target or '(default target)'}: exit {status}, {int(wall // 60)} min {wall % 60:.0f} s wall, "
      f"{jobs} jobs; {load}")
EOF
exit "$STATUS"
