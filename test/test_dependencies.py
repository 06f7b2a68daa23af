"""Dependencies are declared where ROS users resolve them (package.xml, rosdep keys) and training-only ones are
not imported by the command-line help."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# requirements/base.txt name -> rosdep key in package.xml (None: no rosdep key, the pip line is in docs/ros.md).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "opencv-python-headless": "python3-opencv",
    "safetensors": None,
    "PyYAML": "python3-yaml",
    "tqdm": "python3-tqdm",
    "tensorboard": "python3-tensorboard-pip",
    "matplotlib": "python3-matplotlib",
    "kornia": "python3-kornia-pip",
    "pillow": "python3-pil",
}


def test_every_runtime_requirement_is_declared_in_package_xml():
    names = [
        re.split(r"[=<>~!\s\[;]", line, maxsplit=1)[0]
        for line in (REPO_ROOT / "requirements" / "base.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    package = ET.parse(REPO_ROOT / "package.xml").getroot()
    declared = {element.text for element in package if element.tag.endswith("depend")}
    ros_doc = (REPO_ROOT / "docs" / "ros.md").read_text()
    for name in names:
        assert name in ROSDEP_KEYS, f"requirements/base.txt has {name}: add its rosdep key to package.xml and here"
        key = ROSDEP_KEYS[name]
        if key is None:
            assert f"pip install {name}" in ros_doc, f"{name} has no rosdep key: docs/ros.md must give the pip line"
        else:
            assert key in declared, f"package.xml does not declare {key} (for {name})"


def test_train_help_does_not_import_the_training_only_dependencies():
    code = (
        "import sys\n"
        "from kp2d_model.training import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as exit_:\n    assert exit_.code == 0, exit_.code\n"
        "print('LOADED', sorted(m for m in ('kornia', 'tensorboard', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "LOADED []" in result.stdout, result.stdout[-500:]
