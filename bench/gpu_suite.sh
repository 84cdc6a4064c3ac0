#!/usr/bin/env bash
# Every GPU measurement of the project in one run, under one time limit, as one markdown table.
#
#   bench/gpu_suite.sh              on a CUDA machine: full-size SD1.5 (random weights) at
#                                   Segmind's defaults (512x640, 25 steps, highres 1.5, cfg 2),
#                                   at most 8 minutes on one H100 (RELIGHT_GPU_SUITE_LIMIT_S)
#   bench/gpu_suite.sh --cpu-smoke  the same steps on the tiny model on the CPU (a few minutes)
#   bench/gpu_suite.sh --smoke      the same steps, tiny model, smallest sizes (well under a
#                                   minute): that the script works, nothing measured
#
# Steps (each under `timeout`, and all under the overall limit; a step that fails or runs out
# of time leaves its rows "failed" and the table is printed anyway):
#   1. bench/node_gpu.py     ours vs the reference demo: s/image, speed-up, peak GPU memory,
#                            pixel differences (fp32 vs fp32, fp16 vs fp32, fp16 vs fp16)
#   2. bench/node_batching.py  images/s at 1, 2, 4, 8 concurrent requests, batching off and on
#   3. matting               s per subject of the RMBG matting model, when the tree can build one
#                            (`inference.tiny_model --rmbg`), else "n/a"
# Without CUDA (and without --cpu-smoke/--smoke) it says so and exits 0.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

MODE=gpu
case "${1:-}" in
  --cpu-smoke) MODE=cpu ;;
  --smoke) MODE=smoke ;;
  "") ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--cpu-smoke | --smoke]" >&2; exit 2 ;;
esac

if [ "$MODE" = gpu ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_suite not run: CUDA is not available (--cpu-smoke runs the same steps on the CPU)"
  exit 0
fi

# 8 minutes on a GPU; the CPU modes are slower and only have to finish.
if [ "$MODE" = gpu ]; then LIMIT_S="${RELIGHT_GPU_SUITE_LIMIT_S:-480}"; else LIMIT_S="${RELIGHT_GPU_SUITE_LIMIT_S:-900}"; fi
STARTED=$SECONDS
SCRATCH="$(mktemp -d -t relight-gpu-suite-XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT

# step NAME SECONDS COMMAND...: run under min(SECONDS, what is left of the limit); its output
# goes to $SCRATCH/NAME.out (and to stderr as it runs), its exit status to $SCRATCH/NAME.rc.
step() {
  local name="$1" cap="$2"
  shift 2
  local left=$((LIMIT_S - (SECONDS - STARTED)))
  [ "$cap" -lt "$left" ] || cap="$left"
  if [ "$cap" -le 0 ]; then
    echo "gpu_suite: no time left for $name" >&2
    echo 124 >"$SCRATCH/$name.rc"
    return
  fi
  echo "gpu_suite: $name (at most ${cap} s)" >&2
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$SCRATCH/$name.out" >&2
  echo "${PIPESTATUS[0]}" >"$SCRATCH/$name.rc"
}

case "$MODE" in
  gpu)
    DEVICE=cuda SIZE=(--width 512 --height 640 --steps 25 --highres-scale 1.5)
    GPU_RUNS=(--runs 3 --warmup 1) LEVELS=1,2,4,8 REPEATS=1 MODEL_CAP=150 STEP_CAP=240 ;;
  cpu)
    DEVICE=cpu SIZE=(--width 256 --height 320 --steps 3 --highres-scale 1.5)
    GPU_RUNS=(--runs 1 --warmup 0) LEVELS=1,2,4,8 REPEATS=1 MODEL_CAP=120 STEP_CAP=420 ;;
  smoke)
    DEVICE=cpu SIZE=(--width 256 --height 256 --steps 1 --highres-scale 1.0)
    GPU_RUNS=(--runs 1 --warmup 0 --skip-check) LEVELS=1,2 REPEATS=1 MODEL_CAP=120 STEP_CAP=300 ;;
esac

# 0. The model folder, written once for every step: SD1.5's architecture on a GPU.
MODEL="$SCRATCH/model"
step model "$MODEL_CAP" "$PYTHON" - "$MODEL" "$MODE" <<'EOF'
import sys
import time
from pathlib import Path

import torch

from inference.tiny_model import write_model, write_tiny_model

started = time.perf_counter()
if sys.argv[2] == "gpu":
    from bench.node_gpu import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG

    write_model(
        Path(sys.argv[1]),
        unet_config=SD15_UNET_CONFIG,
        vae_config=SD15_VAE_CONFIG,
        text_config=SD15_TEXT_CONFIG,
        dtype=torch.float16,
    )
    kind = "SD1.5 (random weights)"
else:
    write_tiny_model(Path(sys.argv[1]))
    kind = "tiny"
print(f"model folder ({kind}) written in {time.perf_counter() - started:.1f} s")
EOF

# 1. Ours against the reference demo (timings, memory, pixel differences).
step node_gpu "$STEP_CAP" "$PYTHON" bench/node_gpu.py --device "$DEVICE" --model-dir "$MODEL" \
  "${SIZE[@]}" "${GPU_RUNS[@]}"

# 2. Batching at 1, 2, 4 and 8 concurrent requests.
step node_batching "$STEP_CAP" "$PYTHON" bench/node_batching.py --device "$DEVICE" \
  --model-dir "$MODEL" "${SIZE[@]}" --concurrency "$LEVELS" --repeats "$REPEATS"

# 3. The matting model's cost, where this tree can build one.
if "$PYTHON" -m inference.tiny_model --help 2>/dev/null | grep -q -- --rmbg; then
  step matting "$STEP_CAP" "$PYTHON" - "$SCRATCH/rmbg" "$DEVICE" "$MODE" <<'EOF'
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from inference.iclight.images import RMBGMatting

folder, device = Path(sys.argv[1]), torch.device(sys.argv[2])
subprocess.run(
    [sys.executable, "-m", "inference.tiny_model", str(folder), "--rmbg"], check=True
)
# The tiny RMBG-1.4 (the real architecture, narrower), run as the node runs the folder's rmbg/.
matting = RMBGMatting.from_model_dir(folder, device)
with Image.open("examples/chelsea.png") as opened:
    subject = opened.convert("RGB")
runs = 1 if sys.argv[3] == "smoke" else 5
matting.alpha(subject)
started = time.perf_counter()
for _ in range(runs):
    matting.alpha(subject)
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(f"matting s/subject: {(time.perf_counter() - started) / runs:.4f}")
EOF
fi

"$PYTHON" - "$SCRATCH" "$MODE" "$((SECONDS - STARTED))" <<'EOF'
"""The table: one row per measurement, "failed" where its step failed, "n/a" where it does not
apply (CUDA-only figures on the CPU, matting without a matting model)."""

import re
import sys
from pathlib import Path

scratch, mode, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def output(name: str) -> str | None:
    path = scratch / f"{name}.out"
    return path.read_text() if path.exists() else None


def rc(name: str) -> str:
    path = scratch / f"{name}.rc"
    return path.read_text().strip() if path.exists() else "not run"


def status(name: str) -> str:
    code = rc(name)
    return {"0": "ok", "124": "timed out", "137": "timed out", "not run": "n/a"}.get(
        code, f"failed (exit {code})"
    )


def find(name: str, pattern: str, missing: str) -> str:
    if missing.startswith("n/a"):
        return missing
    text = output(name)
    if text is None:
        return missing
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        return "failed" if rc(name) != "0" else missing
    return found.group(1)


cuda_only = "n/a (CUDA only)" if mode != "gpu" else "missing"
rows_fp32_pattern = r"ours fp32 vs reference fp32.*difference (\d+, mean [\d.]+)"
rows: list[tuple[str, str]] = [
    ("model folder", find("model", r"^(model folder .*)$", "failed")),
    ("ours: s/image", find("node_gpu", r"^ours\s+[\d.]+\s+([\d.]+)\s", "failed")),
    ("ours+graphs: s/image", find("node_gpu", r"^ours\+graphs\s+[\d.]+\s+([\d.]+)\s", cuda_only)),
    ("reference demo: s/image", find("node_gpu", r"^plain\s+[\d.]+\s+([\d.]+)\s", "failed")),
    ("speed-up (reference / ours)", find("node_gpu", r"speed-up \(plain / ours\): ([\d.]+x)", "failed")),
    ("peak GPU memory, ours", find("node_gpu", r"peak GPU memory, ours: ([\d.]+ GiB)", cuda_only)),
    (
        "pixel diff ours fp32 vs reference fp32 (max, mean)",
        find("node_gpu", rows_fp32_pattern, "failed"),
    ),
    (
        "pixel diff ours fp16 vs reference fp32 (max, mean)",
        find("node_gpu", r"ours fp16 vs reference fp32.*difference (\d+, mean [\d.]+)", cuda_only),
    ),
    (
        "pixel diff ours fp16 (optimisations off) vs reference fp16 (max, mean)",
        find("node_gpu", r"ours fp16 \(optimisations off\).*difference (\d+, mean [\d.]+)", cuda_only),
    ),
]
smoke = "n/a (smoke)" if mode == "smoke" else "failed"
rows[6] = (rows[6][0], find("node_gpu", rows_fp32_pattern, smoke))
for level in (1, 2, 4, 8):
    missing = smoke if level > 2 else "failed"
    cells = find("node_batching", rf"^\| {level} \| ([\d.]+ \| [\d.]+ \| [\d.]+x) \|", missing)
    rows.append((f"batching, {level} concurrent: images/s off, on, on/off", cells.replace(" |", ",")))
matting_ran = rc("matting") != "not run"
rows.append(
    (
        "matting: s/subject",
        find("matting", r"matting s/subject: ([\d.]+)", "failed")
        if matting_ran
        else "n/a (no matting model)",
    )
)
for name in ("model", "node_gpu", "node_batching", "matting"):
    rows.append((f"step {name}", status(name)))

where = {"gpu": "CUDA, SD1.5 (random weights), 512x640, 25 steps, highres 1.5",
         "cpu": "CPU, tiny model, 256x320, 3 steps, highres 1.5",
         "smoke": "CPU, tiny model, 256x256, 1 step (smoke: nothing measured)"}[mode]
print(f"\n## GPU suite ({where}; {seconds} s)\n")
print("| measurement | value |")
print("|---|---|")
for label, value in rows:
    print(f"| {label} | {value} |")
EOF
