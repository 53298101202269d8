"""A checkpoint that would run code when unpickled is refused by every command that loads one, with
the same sentence (the type it holds, and that loading it would run code), and nothing runs."""

import os

import pytest

pytest.importorskip("mmseg", reason="needs the train extra: pip install 'segbench[train]'")

import torch  # noqa: E402

from segbench.cli import main  # noqa: E402
from segbench.mmseg.configs import shipped_configs_root  # noqa: E402


class _RunsACommand:
    """Pickles as ``os.system(command)``: what a hostile .pth file does when loaded without care."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _RunsACommand(f"touch {marker}")}}, path)
    return path, marker


@pytest.mark.parametrize("command", ["export", "eval", "import", "train --resume"])
def test_a_code_running_checkpoint_is_refused_everywhere(tmp_path, hostile, capsys, command):
    path, marker = hostile
    if command == "export":
        argv = ["export", str(path), "-o", str(tmp_path / "m.onnx")]
    elif command == "eval":
        assert main(["data", "synth", str(tmp_path / "d"), "--train", "1", "--size", "64",
                     "--test", "0"]) == 0
        argv = ["eval", str(path), "--data", str(tmp_path / "d")]
    elif command == "import":
        config = shipped_configs_root() / "pspnet/pspnet_r18-d8_4xb4-80k_potsdam-512x512.py"
        argv = ["import", str(config), str(path), "-o", str(tmp_path / "out.pth")]
    else:  # the saved training state a resumed training loads
        assert main(["data", "synth", str(tmp_path / "d"), "--train", "1", "--size", "64",
                     "--test", "0"]) == 0
        run = tmp_path / "run"
        run.mkdir()
        os.replace(path, run / "resume.pth")
        path = run / "resume.pth"
        argv = ["train", "fcn-hrnet18s", "--data", str(tmp_path / "d"), "-o", str(run), "--iters", "2",
                "--crop", "64", "--resume"]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert "holds a posix.system object" in err[0] and "would run code from the file" in err[0], err[0]
    assert "weights_only" not in err[0]
    assert not marker.exists()  # nothing ran
