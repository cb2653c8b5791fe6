"""A plain state_dict of a cervrt architecture -> a cervrt checkpoint (weights_only loading, strict fit)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cervrt.checkpoint import load_checkpoint  # noqa: E402
from cervrt.constants import CLASS_NAMES  # noqa: E402
from cervrt.errors import InputError, ModelError  # noqa: E402
from cervrt.export.state_dict import checkpoint_from_state_dict, class_names_for, convert_state_dict  # noqa: E402
from cervrt.models import create_model, model_from_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("hspnet", encoder="resnet34").eval()
    path = tmp_path_factory.mktemp("sd") / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def test_a_wrapped_dataparallel_state_dict_becomes_a_checkpoint_beside_the_onnx(weights, tmp_path):
    path, model = weights
    target = checkpoint_from_state_dict(path, tmp_path / "hsp.onnx", "hspnet", encoder="resnet34", classes=5,
                                        patch_size=64, mpp=0.5)
    assert target == tmp_path / "hsp.pt"
    ckpt = load_checkpoint(target)
    assert ckpt["arch"] == "hspnet" and ckpt["arch_kwargs"] == {"encoder": "resnet34"}
    assert tuple(ckpt["class_names"]) == CLASS_NAMES and ckpt["patch_size"] == 64 and ckpt["mpp"] == 0.5
    rebuilt = model_from_checkpoint(ckpt)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_weights_of_another_encoder_are_refused_in_one_line(weights):
    with pytest.raises(ModelError, match=r"do not fit hspnet: \d+ missing keys .* check --arch, --encoder") as info:
        convert_state_dict(weights[0], "hspnet", encoder="resnet101")
    assert "\n" not in str(info.value)


def test_other_class_counts_and_names():
    assert class_names_for(5) == CLASS_NAMES and class_names_for("3") == ("background", "class 1", "class 2")
    assert class_names_for("bg,tumour") == ("bg", "tumour")
    with pytest.raises(InputError, match="at least 2"):
        class_names_for(1)


def test_a_cervrt_checkpoint_or_a_pickle_is_not_taken(tmp_path, weights):
    path = checkpoint_from_state_dict(weights[0], tmp_path / "a.onnx", "hspnet", encoder="resnet34")
    with pytest.raises(InputError, match="already a cervrt checkpoint: export it without --arch"):
        convert_state_dict(path, "hspnet")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(ModelError, match="is not a state_dict"):
        convert_state_dict(tmp_path / "list.pth", "hspnet")


def test_cervrt_export_takes_a_state_dict_with_arch(weights, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "hsp.onnx"
    result = subprocess.run([sys.executable, "-m", "cervrt", "export", str(weights[0]), "--arch", "hspnet",
                             "--encoder", "resnet34", "--classes", "5", "--patch-size", "64", "--mpp", "0.5",
                             "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    from cervrt.artifact import read_metadata

    metadata = read_metadata(out)
    assert metadata["arch"] == "hspnet" and metadata["patch_size"] == 64 and metadata["mpp"] == 0.5
    assert metadata["source_checkpoint"].endswith("hsp.pt") and (tmp_path / "hsp.pt").is_file()
    refused = subprocess.run([sys.executable, "-m", "cervrt", "export", str(weights[0]), "--encoder", "resnet34"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip() == "error: --encoder describes a plain state_dict: " \
                                                                   "add --arch NAME"
