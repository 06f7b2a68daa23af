#!/usr/bin/env bash
# Stage the photos the default model is trained on into DIR (default data/train_photos):
# Debian's opencv-doc examples (Apache-2.0 / BSD-3) and lomiri-wallpapers-16.04 (CC-BY / CC-BY-SA / CC0),
# downloaded with `apt-get download` and unpacked without installing anything system-wide.
# scikit-image's bundled photos are NOT used: they are the held-out benchmark and demo photos.
set -euo pipefail
out=${1:-data/train_photos}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
(cd "$work" && apt-get download opencv-doc lomiri-wallpapers-16.04 >/dev/null)
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done

examples="$work/root/usr/share/doc/opencv-doc/examples/data"
for name in aero1.jpg aero3.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg box_in_scene.png \
            building.jpg butterfly.jpg cards.png chicky_512.png ela_original.jpg fruits.jpg graf1.png home.jpg \
            left01.jpg left.jpg leuvenA.jpg licenseplate_motion.jpg messi5.jpg orange.jpg pca_test1.jpg \
            rubberwhale1.png smarties.png squirrel_cls.jpg starry_night.jpg stuff.jpg sudoku.png text_defocus.jpg \
            Blender_Suzanne1.jpg; do
    cp "$examples/$name" "$out/opencv_$name"
done
for path in "$work"/root/usr/share/backgrounds/*.jpg; do
    cp "$path" "$out/lomiri_$(basename "$path")"
done
# Cap the longer side at 1600 px (INTER_AREA): the wallpapers are up to 5312 px, and decoding them for
# every random crop would dominate a CPU training step.
"${PYTHON:-.venv/bin/python}" - "$out" <<'PY'
import sys
from pathlib import Path

import cv2

for path in sorted(Path(sys.argv[1]).iterdir()):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    scale = 1600 / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
PY
echo "staged $(find "$out" -type f | wc -l) photos in $out"
