#!/usr/bin/env bash
# The README's main job: the end-to-end demo on the embedded default model.
# Renders a head-motion sequence with known ground truth, replays it as a camera over
# real ROS 2 transport (confined to this machine), runs pose_node in its own process,
# and reports the per-angle MAE and rate. Extra arguments go to lechpe-demo
# (e.g. --video FILE, --camera 0, --frames 300, --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec "$root/.venv/bin/lechpe-demo" "$@"
