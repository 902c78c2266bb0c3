"""`python -m training evaluate|predict|crops`: real subprocesses on a saved model; bad arguments exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.training.helpers import squares, write_coco
from training.aggregate import apply
from training.cli import main
from training.data import save_set
from training.evaluate import evaluate, predict
from training.local import HyperParams, train_local
from training.weights import initial_state, load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smallcnn trained briefly on coloured squares (16²), saved as a weights file."""
    crops = squares(200, image_size=16, seed=8)
    state = initial_state("smallcnn", 4, 16, seed=0)
    state = apply(state, train_local("smallcnn", 4, 16, state, crops, HyperParams(), steps=25, seed=0).delta)
    path = tmp_path_factory.mktemp("model") / "squares.safetensors"
    save_model(path, state, model="smallcnn", classes=crops.classes, image_size=16)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_evaluate_prints_the_accuracy_of_the_model_on_a_crop_set(model: Path, tmp_path: Path) -> None:
    test_set = squares(64, image_size=16, seed=9)
    save_set(tmp_path / "test.safetensors", test_set)
    state, info = load_model(model)
    expected = evaluate("smallcnn", 4, 16, state, test_set)
    done = _run("evaluate", str(model), str(tmp_path / "test.safetensors"))
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    correct = round(expected["accuracy"] * 64)
    assert first == f"accuracy {expected['accuracy']:.4f} ({correct}/64 crops), loss {expected['loss']:.4f}"
    assert expected["accuracy"] > 0.5  # the model did learn something: the figure is not chance by accident
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == info.classes


def test_predict_prints_class_and_confidence_per_image(model: Path, tmp_path: Path) -> None:
    crops = squares(3, image_size=16, seed=10)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"crop{k}.png")
        Image.fromarray(crops.images[k].permute(1, 2, 0).numpy()).save(paths[k])
    state, info = load_model(model)
    expected = predict("smallcnn", info.classes, 16, state, crops.images)
    done = _run("predict", str(model), *map(str, paths))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for line, path, (name, confidence) in zip(lines, paths, expected, strict=True):
        assert line == f"{path}: {name} (confidence {confidence:.3f})"
        assert re.fullmatch(r".+: (red|green|blue|yellow) \(confidence [01]\.\d{3}\)", line)


def test_a_missing_model_is_a_clear_error_with_exit_2(tmp_path: Path) -> None:
    done = _run("predict", str(tmp_path / "absent.safetensors"), str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert "absent.safetensors" in done.stderr


def test_bad_arguments_exit_2_with_a_reason(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(model)])  # no dataset
    assert exit_info.value.code == 2
    assert "the following arguments are required: dataset" in capsys.readouterr().err
    (tmp_path / "not-an-image.png").write_text("hello")
    assert main(["predict", str(model), str(tmp_path / "not-an-image.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    write_coco(tmp_path / "coco")  # classes red_box/blue_box: not the model's
    assert main(["evaluate", str(model), str(tmp_path / "coco")]) == 2
    assert "are not among the model's" in capsys.readouterr().err
    save_set(tmp_path / "big.safetensors", squares(4, image_size=24))
    assert main(["evaluate", str(model), str(tmp_path / "big.safetensors")]) == 2
    assert "crops are 24², the model expects 16²" in capsys.readouterr().err


def test_crops_writes_a_crop_set_and_evaluate_reads_coco_directly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_coco(tmp_path / "coco")
    assert (
        main(
            [
                "crops",
                str(tmp_path / "coco"),
                "--out",
                str(tmp_path / "c.safetensors"),
                "--image-size",
                "16",
                "--png-dir",
                str(tmp_path / "png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 crops of 16² in 2 classes (red_box 3, blue_box 2)" in out
    assert len(list((tmp_path / "png").glob("*_red_box.png"))) == 3
    state = initial_state("smallcnn", 2, 16, seed=0)
    save_model(tmp_path / "m.safetensors", state, model="smallcnn", classes=["blue_box", "red_box"], image_size=16)
    assert main(["evaluate", str(tmp_path / "m.safetensors"), str(tmp_path / "coco")]) == 0
    # Labels are renumbered to the model's class order (blue_box first) before scoring.
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"accuracy \d\.\d{4} \(\d/5 crops\)", lines[0])
    assert [line.split()[0] for line in lines[1:]] == ["blue_box", "red_box"]
    assert lines[1].endswith("/2)")
    assert lines[2].endswith("/3)")
