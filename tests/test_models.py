"""Model loading: local folders, dtypes, fingerprints and one-sentence errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from legend_core.method.models import (
    ModelLoadError,
    cpu_has_bf16,
    load_model,
    resolve_device,
    resolve_dtype,
)


def test_local_folder_loads_without_a_head(tiny_lm, tiny_model_dir):
    assert tiny_lm.num_layers == 3 and tiny_lm.hidden_size == 32
    assert tiny_lm.label == tiny_model_dir.name
    assert tiny_lm.fingerprint.startswith("dir:")
    assert not hasattr(tiny_lm.model, "lm_head")
    assert tiny_lm.tokenizer.pad_token_id is not None


def test_dtype_choice(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    native = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == native


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch):
    import legend_core.method.models as models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    from legend_core.method.models import cpu_has_bf16

    expected = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == torch.float32


def test_fingerprint_changes_when_weights_change(tmp_path, tiny_model_dir):
    from tests.conftest import make_tiny_model

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    same = load_model(str(copy), device="cpu")
    other = load_model(str(make_tiny_model(tmp_path / "other", seed=1)), device="cpu")
    first = load_model(str(tiny_model_dir), device="cpu")
    assert same.fingerprint == first.fingerprint
    assert other.fingerprint != first.fingerprint


@pytest.mark.parametrize(
    "name, expected",
    [
        ("/no/such/folder", "does not exist"),
        ("no-such-org/no-such-model", "neither a local folder nor in the local model cache"),
    ],
)
def test_missing_model_gives_one_sentence(name, expected):
    with pytest.raises(ModelLoadError) as error:
        load_model(name, device="cpu")
    message = str(error.value)
    assert expected in message and "\n" not in message and "Traceback" not in message


def test_broken_model_folder_gives_one_sentence(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not really weights")
    with pytest.raises(ModelLoadError, match="could not be loaded") as error:
        load_model(str(broken), device="cpu")
    assert "\n" not in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(empty))


def test_device_checks():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelLoadError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")
