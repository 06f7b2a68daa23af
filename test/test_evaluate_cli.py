"""``kp2d-evaluate``: the installed console script against the original's results, options and errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check_correctness

from kp2d_model.checkpoint import default_checkpoint_path
from kp2d_model.evaluation.cli import build_parser, main, settings_from

SETTINGS = {"320x240": 300, "640x480": 1000}


def console_script() -> str:
    """The ``kp2d-evaluate`` entry point installed next to this interpreter (``pip install -e .``)."""
    path = Path(sys.executable).parent / "kp2d-evaluate"
    found = str(path) if path.is_file() else shutil.which("kp2d-evaluate")
    if found is None:
        pytest.fail("kp2d-evaluate is not installed; run `pip install --no-deps --no-build-isolation -e .`")
    return found


@pytest.mark.parametrize("version", ["v0", "v4"])
def test_console_script_reproduces_the_original_at_both_paper_settings(
    reference_dir: Path, tmp_path: Path, version: str, ransac_as_fixtures: bool
) -> None:
    expected = json.loads((reference_dir / "expected.json").read_text())["evaluate_keypoint_net"]
    report_path = tmp_path / "report.json"
    command = [
        console_script(),
        "--checkpoint",
        str(reference_dir / f"{version}_reference.ckpt"),
        "--hpatches",
        str(reference_dir / "mini_hpatches"),
        "--device",
        "cpu",
        "--json",
        str(report_path),
        "--quiet",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(report_path.read_text())
    assert [run["resolution"] for run in report["runs"]] == [[320, 240], [640, 480]]
    for run in report["runs"]:
        resolution = f"{run['resolution'][0]}x{run['resolution'][1]}"
        assert run["top_k"] == SETTINGS[resolution]
        reference = expected[f"{version}_{resolution}_top{run['top_k']}"]
        summary = run["summary"]["all"]
        for name in ("repeatability", "localization_error", "mscore"):
            assert summary[name] == pytest.approx(reference[name], abs=1e-5), (resolution, name)
        check_correctness(summary, reference, ransac_as_fixtures, f"{version} {resolution}")
        assert len(run["pairs"]) == 10 and set(run["pairs"][0]) >= {"sequence", "pair", "repeatability", "c1"}
        for subset in ("i", "v", "all"):
            assert f"| kp2d | {resolution} | {run['top_k']} | {subset} |" in completed.stdout


def test_several_methods_give_one_comparison_table_and_plots(reference_dir: Path, tmp_path: Path, capsys) -> None:
    plots = tmp_path / "plots"
    argv = ["--hpatches", str(reference_dir / "mini_hpatches"), "--method", "orb", "--method", "sift"]
    argv += ["--resolution", "320x240", "--top-k", "200", "--plots", str(plots), "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for method in ("orb", "sift"):
        for subset in ("i", "v", "all"):
            assert f"| {method} | 320x240 | 200 | {subset} |" in table
        assert (plots / f"matches_{method}_v_motorcycle_left_1-6_320x240.png").stat().st_size > 0
    assert (plots / "per_sequence_mscore_320x240_top200.png").stat().st_size > 0


def test_default_settings_are_the_papers_and_an_explicit_top_k_applies_to_all() -> None:
    parser = build_parser()
    assert settings_from(parser.parse_args(["--hpatches", "x"])) == [((320, 240), 300), ((640, 480), 1000)]
    explicit = parser.parse_args(["--hpatches", "x", "--top-k", "500"])
    assert settings_from(explicit) == [((320, 240), 500), ((640, 480), 500)]
    one = parser.parse_args(["--hpatches", "x", "--resolution", "640x480"])
    assert settings_from(one) == [((640, 480), 1000)]


def test_kp2d_without_checkpoint_evaluates_the_bundled_default_model(reference_dir: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    hpatches = str(reference_dir / "mini_hpatches")
    assert main(["--hpatches", hpatches, "--resolution", "320x240", "--quiet", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["checkpoint"] == str(default_checkpoint_path())
    assert [run["method"] for run in report["runs"]] == ["kp2d"]


def test_each_input_scale_gives_its_own_kp2d_row(reference_dir: Path, tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "report.json"
    hpatches = str(reference_dir / "mini_hpatches")
    argv = ["--checkpoint", str(reference_dir / "v4_reference.ckpt"), "--hpatches", hpatches]
    argv += ["--resolution", "320x240", "--input-scale", "1", "--input-scale", "2", "--quiet"]
    argv += ["--json", str(report_path)]
    assert main(argv) == 0
    assert "| kp2d | 320x240 | 300 | all |" in capsys.readouterr().out
    runs = {run["method"]: run for run in json.loads(report_path.read_text())["runs"]}
    assert list(runs) == ["kp2d", "kp2d_x2"]
    assert runs["kp2d_x2"]["resolution"] == [320, 240] and runs["kp2d_x2"]["summary"]["all"]["pairs"] == 10
    assert runs["kp2d_x2"]["pairs"] != runs["kp2d"]["pairs"]


def test_bad_input_scale_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--hpatches", "x", "--input-scale", "0"])
    assert "expected a number in (0, 8], got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--hpatches", "x", "--method", "orb", "--input-scale", "2"])
    assert "--input-scale applies to the kp2d method" in capsys.readouterr().err


def test_bad_resolution_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--hpatches", "x", "--method", "orb", "--resolution", "320by240"])
    assert "resolution must look like 320x240" in capsys.readouterr().err


def test_missing_hpatches_folder_is_reported_with_its_path(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--hpatches", str(missing), "--method", "orb", "--quiet"]) == 1
    assert f"kp2d-evaluate: error: {missing}: HPatches folder not found" in capsys.readouterr().err


def test_unreadable_checkpoint_is_reported_with_its_path(reference_dir: Path, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "broken.ckpt"
    checkpoint.write_bytes(b"not a checkpoint")
    argv = ["--checkpoint", str(checkpoint), "--hpatches", str(reference_dir / "mini_hpatches"), "--quiet"]
    assert main(argv) == 1
    assert str(checkpoint) in capsys.readouterr().err
