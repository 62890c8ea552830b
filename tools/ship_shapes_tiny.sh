#!/usr/bin/env bash
# Train, export and evaluate the model shipped as builtin:shapes_tiny (docs/training.md,
# "The shipped model"). Run from the repository root; on one GPU it is a few minutes.
#
#   tools/ship_shapes_tiny.sh OUT [STEPS] [key=value ...]
#
# OUT receives: shapes_tiny/ (the bf16 export with its training log: copy it to
# unicl/assets/models/shapes_tiny), eval_segmentation.{json,md}, eval_captioning.{json,md},
# grid.png (from `unicl demo` on the export) and the exact commands in commands.txt.
# Extra key=value arguments override the training config (e.g. data.workers=16).
set -euo pipefail

out=${1:?usage: tools/ship_shapes_tiny.sh OUT [STEPS] [key=value ...]}
steps=${2:-6000}
shift $(( $# >= 2 ? 2 : 1 ))
run=${SHIP_RUN_DIR:-runs/shapes-tiny-ship}
mkdir -p "$out"

train=(unicl train shapes_tiny --no-progress "train.run_dir=$run" "train.steps=$steps"
       train.batch_size=32 train.micro_batch=32 train.warmup_steps=100
       "train.save_every=$(( steps / 4 > 0 ? steps / 4 : 1 ))" "$@")
export_cmd=(unicl export "$run" "$out/shapes_tiny" --dtype bfloat16)
seg=(unicl eval "$out/shapes_tiny" --task segmentation --shots 0 1 2 3 --out "$out" --no-progress)
cap=(unicl eval "$out/shapes_tiny" --task captioning --shots 0 1 2 3 --out "$out" --no-progress)
printf '%s\n' "${train[*]}" "${export_cmd[*]}" "${seg[*]}" "${cap[*]}" > "$out/commands.txt"

"${train[@]}"
"${export_cmd[@]}"
"${seg[@]}"
"${cap[@]}"
du -sh "$out/shapes_tiny" | tee "$out/size.txt"
