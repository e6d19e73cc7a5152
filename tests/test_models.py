"""Model loading: local folders, dtypes, fingerprints and one-sentence errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from legend_core.method import models
from legend_core.method.models import (
    ModelLoadError,
    cpu_bf16_speedup,
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
    fast = cpu_has_bf16() and cpu_bf16_speedup() >= models.BF16_MIN_SPEEDUP
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)


def test_auto_dtype_on_cpu_needs_bf16_instructions_and_speed(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda: 3.0)  # a Zen 5
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda: 0.55)  # this Xeon, same flag
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda: 3.0)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32", "cpu") == torch.float32


def test_bf16_speed_is_measured_once_per_machine_and_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("LEGEND_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(models, "_speedup", None)
    measured = []

    def measure() -> float:
        measured.append(1)
        return 2.5

    monkeypatch.setattr(models, "_measure_bf16_speedup", measure)
    assert models.cpu_bf16_speedup() == 2.5
    record = tmp_path / "cpu_dtype.json"
    assert json.loads(record.read_text())["bf16_speedup"] == 2.5
    monkeypatch.setattr(models, "_speedup", None)  # a second process reads the record
    assert models.cpu_bf16_speedup() == 2.5 and measured == [1]
    # A record of another CPU or torch is measured again.
    record.write_text(json.dumps({**json.loads(record.read_text()), "cpu": "another CPU"}))
    monkeypatch.setattr(models, "_speedup", None)
    assert models.cpu_bf16_speedup() == 2.5 and measured == [1, 1]
    # A broken record is measured again, not an error.
    record.write_text("{not json")
    monkeypatch.setattr(models, "_speedup", None)
    assert models.cpu_bf16_speedup() == 2.5 and measured == [1, 1, 1]


def test_the_bf16_probe_measures_a_real_ratio():
    ratio = models._measure_bf16_speedup()
    assert ratio > 0 and ratio == ratio  # finite and positive, whatever this CPU is


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
