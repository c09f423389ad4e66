#!/usr/bin/env bash
# Start-up time of the dfine command (`--help`, `predict --help`, `inspect` of the demo model)
# and of `import torch` alone, in two source trees (e.g. a `git archive` of an older commit and
# this checkout), interleaved so a shared machine's load hits both alike; ROUNDS runs each.
# Prints the median wall and CPU (user + sys) seconds. CPU time is the figure to compare on a
# loaded machine. Usage: benchmarks/cli_startup.sh BEFORE_DIR AFTER_DIR [ROUNDS]
set -euo pipefail
PY=${PYTHON:-python}
BEFORE=$(realpath "$1"); AFTER=$(realpath "$2"); ROUNDS=${3:-5}
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT
for _ in $(seq "$ROUNDS"); do
  for side in before after; do
    dir=$BEFORE; [ "$side" = after ] && dir=$AFTER
    cd "$dir"
    for cmd in help predict_help inspect torch; do
      case $cmd in
        help) args=(-m dfine.cli --help) ;;
        predict_help) args=(-m dfine.cli predict --help) ;;
        inspect) args=(-m dfine.cli inspect assets/dfine_n_synth.safetensors) ;;
        torch) args=(-c "import torch") ;;
      esac
      /usr/bin/time -f "$side $cmd %e %U %S" -a -o "$RAW" "$PY" "${args[@]}" >/dev/null 2>&1
    done
  done
done
"$PY" - "$RAW" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(lambda: ([], []))
for line in open(sys.argv[1]):
    side, cmd, wall, user, system = line.split()
    runs[side, cmd][0].append(float(wall))
    runs[side, cmd][1].append(float(user) + float(system))
print("| tree | command | median wall s | median CPU s |\n|---|---|---|---|")
for (side, cmd), (wall, cpu) in sorted(runs.items()):
    print(f"| {side} | {cmd} | {statistics.median(wall):.2f} | {statistics.median(cpu):.2f} |")
PY
