"""The one place that creates onnxruntime sessions: providers, threads and strictness.

Provider choice: ``"auto"`` takes CUDA when onnxruntime-gpu is installed and a CUDA session can actually be
created, else CPU, and logs which; ``"cpu"``, ``"cuda"`` or an explicit list must be honoured exactly, and a
requested provider that is not installed, or that the session silently dropped, is an error.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("onnxforge")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {"cpu": [CPU], "cuda": [CUDA, CPU]}
# The CUDA provider's ``sdpa_kernel`` bit flags (onnxruntime AttentionBackend): flash 1, memory-efficient 2,
# TensorRT fused 4, (cuDNN flash 8), math 16, TensorRT flash 32, cross 64, causal 128; lean 256 stays off as by default
SDPA_WITHOUT_CUDNN = 1 | 2 | 4 | 16 | 32 | 64 | 128
THREADS_ENV = "ONNXFORGE_NUM_THREADS"
# Fusions onnxruntime would redo at load that the CPU runs slower: its SkipLayerNormalization is 2-4x slower than
# Add + LayerNormalization over a batch's positions, so export splits it (export.optimize) and the CPU keeps it
# split (MiniLM int8 at 32 x 64: 247 -> 224 ms; the Marian int8 encoder at 16 x 72: 250 -> 236 ms, best of 15-30)
CPU_UNFUSED = ("SkipLayerNormFusion",)
Providers = str | Sequence[str]


class ProviderError(RuntimeError):
    """A requested execution provider is not installed or could not take the graph."""


@dataclass(frozen=True)
class SessionConfig:
    """Settings of an inference session; ``threads=None`` means the CPUs this process may use."""

    providers: Providers = "auto"
    threads: int | None = None
    inter_op_threads: int = 1
    cpu_mem_arena: bool = True
    graph_optimization: str = "all"  # "disabled" | "basic" | "extended" | "all"
    # Idle intra-op threads spin for work (fastest alone); off where other threads share the cores (a server).
    spin: bool = True
    # CUDA: let attention use cuDNN's flash kernel, which builds a plan for every new input shape (~40 ms each on
    # an H100, measured) and only then runs fast; worth it for fixed shapes, not for text of any length.
    cudnn_attention: bool = False
    # onnxruntime's exact u8·s8 path where the CPU would add products in saturating 16-bit pairs (AVX2, AVX-512
    # without VNNI); slower there, the same elsewhere. :func:`open_artifact` sets it for int8 graphs not built on a
    # saturation-free grid (artifacts from before onnxforge had one).
    exact_integers: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {sorted(_OPT_LEVELS)}")


_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, rounded up; None if none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(count, limit) if limit else count


def default_threads() -> int:
    """``ONNXFORGE_NUM_THREADS`` if set, else :func:`available_cpus`."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return available_cpus()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
    return int(value)


def resolve_providers(requested: Providers, available: Sequence[str]) -> list[str]:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or a list into provider names, all of them installed."""
    if isinstance(requested, str):
        key = requested.lower()
        if key == "auto":
            return [CUDA, CPU] if CUDA in available else [CPU]
        if key not in ALIASES:
            raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list of names, got {requested!r}")
        names = ALIASES[key]
    else:
        names = list(requested)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"providers must be a non-empty list of provider names, got {requested!r}")
    missing = [n for n in names if n not in available]
    if missing:
        hint = " (install onnxruntime-gpu for CUDA)" if CUDA in missing else ""
        raise ProviderError(
            f"execution provider(s) {', '.join(missing)} not available{hint}; installed: {', '.join(available)}"
        )
    return names


def session_options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads or default_threads()
    options.inter_op_num_threads = config.inter_op_threads
    options.enable_cpu_mem_arena = config.cpu_mem_arena
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization]
    if not config.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if config.exact_integers:
        options.add_session_config_entry("session.x64quantprecision", "1")
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    return options


def create_session(model: Path | bytes, config: SessionConfig = SessionConfig()) -> ort.InferenceSession:
    """An InferenceSession on the providers the config asks for, or an error saying why not: the one place onnxforge
    opens a graph (a file, or a serialized model), so threads, providers and integer settings agree everywhere."""
    available = ort.get_available_providers()
    auto = isinstance(config.providers, str) and config.providers.lower() == "auto"
    names = resolve_providers(config.providers, available)
    if CUDA in names:
        _load_cuda_libraries()
    session = _open(model, names, config)
    landed = session.get_providers()
    if names[0] not in landed:
        if auto:  # onnxruntime-gpu without a usable device: auto means CPU then, said out loud
            log.info("onnxforge: CUDA is installed but unusable here; running on CPUExecutionProvider")
            return _open(model, [CPU], config)
        raise ProviderError(f"{names[0]} was requested but the session runs on {', '.join(landed)}")
    log.info("onnxforge: %s runs on %s", _label(model), landed[0])
    return session


def provider_entries(names: list[str], config: SessionConfig) -> list[str | tuple[str, dict[str, str]]]:
    """Provider names as onnxruntime takes them, with CUDA's options."""
    if config.cudnn_attention:
        return list(names)
    cuda = {"sdpa_kernel": str(SDPA_WITHOUT_CUDNN)}
    return [(name, cuda) if name == CUDA else name for name in names]


@functools.cache
def _load_cuda_libraries() -> None:
    """onnxruntime-gpu finds pip-installed CUDA and cuDNN (the nvidia-* wheels) only once they are loaded, which
    ``import torch`` does as a side effect: an app that ships the runtime without torch loads them here."""
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def _label(model: Path | bytes) -> str:
    return "an in-memory graph" if isinstance(model, bytes) else str(model)


def _open(model: Path | bytes, names: list[str], config: SessionConfig) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=session_options(config),
                                    providers=provider_entries(names, config),
                                    disabled_optimizers=list(CPU_UNFUSED) if names[0] == CPU else None)  # fmt: skip
    except Exception as exc:  # onnxruntime raises its own untyped errors: name the file and the cause
        raise RuntimeError(f"{_label(model)}: onnxruntime could not load the model: {exc}") from exc
