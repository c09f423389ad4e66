#!/usr/bin/env bash
# Time of `dfine val --report` (one traced pass + every view + PNG/SVG + index.html, cache off)
# against plain `dfine val` on the same split, interleaved so a shared machine's load hits both
# alike. Usage: benchmarks/evaluate_time.sh WEIGHTS DATA [ROUNDS]   (results in
# benchmarks/results/evaluate_cpu.md; run it under `nice` on a shared machine)
set -euo pipefail
W=${1:-assets/dfine_n_synth.safetensors}
D=${2:?a dataset folder, e.g. one made by: dfine data synth --out data/synth300 --train 0 --val 300}
ROUNDS=${3:-2}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "$ROUNDS"); do
  s=$(date +%s.%N); dfine val -w "$W" -d "$D" -q > "$OUT/val_$i.txt"; e=$(date +%s.%N)
  echo "val $i $(echo "$e - $s" | bc) s"
  s=$(date +%s.%N); dfine val -w "$W" -d "$D" -q --report "$OUT/report" --no-cache > "$OUT/report_$i.txt"
  e=$(date +%s.%N); echo "report $i $(echo "$e - $s" | bc) s"
done
cat "$OUT/report_$ROUNDS.txt"
