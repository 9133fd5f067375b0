#!/usr/bin/env bash
# Smoke test of an installed lstmdet, run as its users run it: the `lstmdet` on PATH (a wheel installed into a
# virtual environment, not the source tree), from an empty directory, with nothing beside it. CI runs it after
# installing the freshly built wheel (.ci/wheel-check); the Docker image runs it at build time.
#
#   bash deploy/smoke-test.sh        # uses the lstmdet found on PATH
set -euo pipefail

bin=$(command -v lstmdet) || { echo "smoke test: no lstmdet on PATH" >&2; exit 1; }
python=$(dirname "$bin")/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "smoke test: $bin in $work"
# lstmdet must come from site-packages, not from a source checkout found through the working directory or PYTHONPATH.
"$python" - <<'PY'
import pathlib, sys, lstmdet, lstmdet.plugins, lstmdet.workers
for module in (lstmdet, lstmdet.plugins, lstmdet.workers):
    where = pathlib.Path(module.__file__).resolve()
    if "site-packages" not in where.parts:
        sys.exit(f"smoke test: {module.__name__} is imported from {where}, not from an installed wheel")
print("lstmdet", lstmdet.__version__, "from", pathlib.Path(lstmdet.__file__).parent)
PY

lstmdet plugins >/dev/null
lstmdet data digits-det scenes --images 8 --seed 3 --split test
lstmdet detect scenes/images --out detections --quiet
"$python" - <<'PY'
import json
summary = json.load(open("detections/summary.json"))
assert (summary["images"], summary["ok"], summary["failed"]) == (8, 8, 0), summary
assert summary["detections"] > 0, "the shipped model found nothing in 8 digit scenes"
PY

cat > tiny.yaml <<'YAML'
task: detect
model:
  classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
  input: {size: 64, max_size: 64}
  backbone: {name: small_cnn, widths: [8, 16, 16], levels: [c3]}
  encoder: {name: bilstm, hidden: 8}
  head: {name: fcos, num_classes: 10, num_convs: 1, norm: none}
data:
  train: {name: digits_det, images: 16, seed: 1, size: 64, split: train}
  val: {name: digits_det, images: 8, seed: 2, size: 64, split: test}
train: {epochs: 1, batch_size: 8, workers: 0}
YAML
lstmdet train tiny.yaml --out run
test -s run/best.pt && test -s run/last.pt && test -s run/summary.json
lstmdet detect scenes/images --out detections-trained --weights run/best.pt --quiet
echo "smoke test: passed"
