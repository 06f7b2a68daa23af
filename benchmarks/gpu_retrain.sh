#!/usr/bin/env bash
# One prepared run for a lent GPU (issue 15, docs/default_model.md "Next training step"): the default model
# fine-tuned at 240x320 from the shipped weights in two ARMS trained side by side on the one GPU, and their epoch
# checkpoints compared on the VALIDATION photos only (never the held-out benchmark):
#   1. the two validation draws, made there: kp2d-make-hpatches --images data/val_photos --seed 1, and the same
#      with --strength 1.6;
#   2. kp2d-train for TRAIN_SECONDS (default 300; stopped with SIGINT, which saves last.pt) in each arm at once,
#      an epoch checkpoint every 287 steps. ARMS (default below): space-separated NAME=OVERRIDE,OVERRIDE,...
#        free30: the original zoom (patch_ratio 0.7), rotations uniform over +-30 deg with rotation_fits=false
#                (black where the photo ends; the fitting rule keeps 90 % under 14 deg): the one setting that kept
#                the validation figures within 300 CPU steps (docs/default_model.md, "Rotation without the zoom");
#        free45: the same over +-45 deg (the strong draw rotates up to 48 deg; +-60 cost 0.1 illumination MScore).
#      Earlier arms: same (the original ranges) and mid (patch_ratio 0.6, max_angle_deg 60).
#   3. the shipped model and CANDIDATES (default 3) epoch checkpoints of each arm, evenly spaced, evaluated on
#      both draws at 320x240 top-300 x1 (in parallel, on the GPU) -> validation.json, one row each;
#   4. the best candidate on the strong draw's C3 (then MScore) among those that keep the shipped model's ordinary
#      C3 and both MScores (within one pair of 90), and the best on strong C3 alone if that is another one,
#      exported as .safetensors, split in 15 MiB parts (the device tool brings back at most 8 files of 16 MiB
#      each): cat NAME.part* > NAME.safetensors.
# Results under ${OUT:-runs/gpu_retrain}/ (validation.json, train.log of both arms, at most 2 weights): <= 6 files.
# Here, before the device call (the photos are gitignored, so the call carries them; 16 MB together):
#   bash scripts/stage_training_photos.sh data/train_photos && bash scripts/stage_validation_photos.sh data/val_photos
#   run: command "bash benchmarks/gpu_retrain.sh", carry ["data/train_photos", "data/val_photos", ".whl"]
# .whl: the trainer's kornia, which the device image lacks (7 MB; .whl/ is gitignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0
# Tree + carried folders: ~32 + 16 + 7 MB of the 64 MiB a call may send. Back here: measure the
# chosen weights ONCE on the held-out draws (kp2d-make-hpatches --seed 0, and --strength 1.6; a candidate that loses
# ordinary pairs on validation may first be blended with the shipped weights, scripts/interpolate_weights.py --alpha A,
# A chosen on the validation draws; scripts/export_default_model.py takes trainer checkpoints only, so shipping a
# blend would first need it to take one), then re-export with
# scripts/export_default_model.py, remake the INT8 graph (docs/inference.md) and re-measure the README's tables.
# A dry run on the CPU checks this script, not the model (EXTRA: more trainer overrides):
#   DEVICE=cpu TRAIN_SECONDS=120 CANDIDATES=1 IMAGE_SHAPE=[120,160] \
#       EXTRA="data.repeat=1 train.max_steps=12 data.num_workers=0" OUT=/tmp/retrain_out bash benchmarks/gpu_retrain.sh
# The one-arm version took 339 s of command on an H200 (2026-11-30; 4516 steps in 300 s): give the call
# timeout_s 600, and do not start it with less than ~8 minutes of device time left.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu_retrain}
device=${DEVICE:-cuda}
train_seconds=${TRAIN_SECONDS:-300}
candidates=${CANDIDATES:-3}
arms=${ARMS:-"free30=augmentation.max_angle_deg=30,augmentation.rotation_fits=false free45=augmentation.max_angle_deg=45,augmentation.rotation_fits=false"}
image_shape=${IMAGE_SHAPE:-[240,320]}
work=${WORK:-/tmp/kp2d_retrain}
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/kp2d_wheels .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/kp2d_wheels"
fi
for folder in data/train_photos data/val_photos; do
    [[ -d "$folder" ]] || { echo "gpu_retrain.sh: $folder is missing: stage it here and carry it (see the header)" >&2; exit 2; }
done
rm -rf "$work" && mkdir -p "$work" "$out"

echo "== 1. validation draws (data/val_photos, seed 1)"
"$python" -m kp2d_model.evaluation.synthetic --images data/val_photos --out "$work/hpval" --seed 1 || exit 1
"$python" -m kp2d_model.evaluation.synthetic --images data/val_photos --out "$work/hpval_strong" --seed 1 \
    --strength 1.6 || exit 1

echo "== 2. training for ${train_seconds} s on $device, arms side by side: $arms"
names=(shipped)
paths=("")
runs=()
: > "$out/train.log"
for arm in $arms; do
    arm_name=${arm%%=*}
    IFS=, read -ra arm_overrides <<< "${arm#*=}"
    train_command=(-m kp2d_model.training.cli default_model --init default --data data/train_photos
        --out "$work/run_$arm_name" train.device="$device" "data.image_shape=$image_shape"
        optimizer.learning_rate=0.00025 train.keep_epoch_checkpoints=true "${arm_overrides[@]}" ${EXTRA:-})
    echo "kp2d-train ${train_command[*]:2}" > "$work/command_$arm_name.txt"
    timeout -s INT -k 60 "$train_seconds" "$python" "${train_command[@]}" > "$work/train_$arm_name.log" 2>&1 &
    runs+=("$arm_name")
done
wait
for arm_name in "${runs[@]}"; do
    { echo "== arm $arm_name: $(cat "$work/command_$arm_name.txt")"; cat "$work/train_$arm_name.log"; } >> "$out/train.log"
    echo "arm $arm_name ended; last line: $(tail -1 "$work/train_$arm_name.log")"
    mapfile -t epochs < <(ls "$work/run_$arm_name"/checkpoints/epoch_*.pt 2>/dev/null | sort)
    ((${#epochs[@]})) || { echo "gpu_retrain.sh: arm $arm_name wrote no epoch checkpoint" >&2; continue; }
    picked=$("$python" -c "import sys; n, k = int(sys.argv[1]), int(sys.argv[2]); k = min(n, k)
print(' '.join(str(round((i + 1) * n / k) - 1) for i in range(k)))" "${#epochs[@]}" "$candidates")
    for index in $picked; do
        names+=("${arm_name}_$(basename "${epochs[$index]}" .pt)")
        paths+=("${epochs[$index]}")
    done
done
((${#names[@]} > 1)) || { echo "gpu_retrain.sh: no arm wrote an epoch checkpoint" >&2; exit 1; }

echo "== 3. $((${#names[@]} - 1)) epoch checkpoints and the shipped model on both validation draws"
for i in "${!names[@]}"; do
    for draw in hpval hpval_strong; do
        checkpoint=()
        [[ -n "${paths[$i]}" ]] && checkpoint=(--checkpoint "${paths[$i]}")
        "$python" -m kp2d_model.evaluation.cli "${checkpoint[@]}" --hpatches "$work/$draw" --device "$device" \
            --resolution 320x240 --top-k 300 --quiet --json "$work/${names[$i]}_$draw.json" \
            > "$work/${names[$i]}_$draw.log" 2>&1 &
    done
done
wait
for log in "$work"/*_hpval*.log; do
    grep -q "Traceback\|error:" "$log" && { echo "evaluation failed: $log"; tail -3 "$log"; }
done

echo "== 4. summary and weights"
"$python" - "$work" "$out" "${names[@]}" <<'PY'
import json
import sys
from pathlib import Path

work, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for name in names:
    row = {"candidate": name}
    for draw in ("hpval", "hpval_strong"):
        path = work / f"{name}_{draw}.json"
        if not path.is_file():
            row[draw] = None
            continue
        summary = json.loads(path.read_text())["runs"][0]["summary"]
        row[draw] = {subset: {key: summary[subset][key] for key in ("c3", "mscore", "repeatability")}
                     for subset in ("all", "v")}
    rows.append(row)
def strong_key(row):
    return row["hpval_strong"]["all"]["c3"], row["hpval_strong"]["all"]["mscore"]


def keeps_shipped_quality(row, shipped, slack=0.011):  # one pair of the 90 in a draw
    return all(row[draw]["all"][key] >= shipped[draw]["all"][key] - slack
               for draw in ("hpval", "hpval_strong") for key in ("c3", "mscore"))


scored = [row for row in rows[1:] if row["hpval_strong"] and row["hpval"]]
shipped = rows[0] if rows[0]["hpval_strong"] and rows[0]["hpval"] else None
# A candidate replaces the shipped model only if it keeps the ordinary draw and both matching scores (the
# 2026-11-30 run's strong-C3 pick lost 0.05 MScore on validation and 0.11 C3 on the held-out draw).
eligible = [row for row in scored if shipped is None or keeps_shipped_quality(row, shipped)]
best = max(eligible or scored, key=strong_key)
strong_only = max(scored, key=strong_key)
result = {"rows": rows, "eligible": [row["candidate"] for row in eligible],
          "best_on_strong_validation": best["candidate"] if eligible else None,
          "best_on_strong_c3_only": strong_only["candidate"]}
(out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
print("| candidate | strong C3 all | strong C3 v | strong MScore | ordinary C3 all | ordinary MScore |")
for row in rows:
    strong, ordinary = row["hpval_strong"], row["hpval"]
    if strong and ordinary:
        print(f"| {row['candidate']} | {strong['all']['c3']:.3f} | {strong['v']['c3']:.3f} | "
              f"{strong['all']['mscore']:.3f} | {ordinary['all']['c3']:.3f} | {ordinary['all']['mscore']:.3f} |")
print("best on the strong validation draw that keeps the shipped model's quality:",
      best["candidate"] if eligible else "none (the shipped model stays; exported for inspection: "
      + best["candidate"] + ")")
(work / "export.txt").write_text(f"{best['candidate']}\n{strong_only['candidate']}\n")
PY
for name in $(sort -u "$work/export.txt"); do
    arm_name=${name%_epoch_*}
    "$python" scripts/export_default_model.py "$work/run_$arm_name/checkpoints/${name#"${arm_name}_"}.pt" \
        --data data/train_photos --metrics "$work/run_$arm_name/metrics.jsonl" --out "$work/$name.safetensors" \
        --command "benchmarks/gpu_retrain.sh: $(cat "$work/command_$arm_name.txt")" > /dev/null || exit 1
    split -b 15M -d "$work/$name.safetensors" "$out/$name.safetensors.part"
done
ls -la "$out"
