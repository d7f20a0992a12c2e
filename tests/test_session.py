"""Provider choice and thread defaults (the CUDA logic is tested here on CPU; see tests marked gpu)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from onnxforge.runtime import load
from onnxforge.runtime.session import (
    CPU,
    CUDA,
    THREADS_ENV,
    ProviderError,
    SessionConfig,
    available_cpus,
    cgroup_cpu_limit,
    default_threads,
    provider_entries,
    resolve_providers,
)  # fmt: skip

CPU_ONLY = [CPU]
WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]


@pytest.mark.parametrize("requested,available,expected", [
    ("auto", CPU_ONLY, [CPU]),
    ("auto", WITH_CUDA, [CUDA, CPU]),
    ("cpu", WITH_CUDA, [CPU]),
    ("CUDA", WITH_CUDA, [CUDA, CPU]),
    ([CPU], CPU_ONLY, [CPU]),
])  # fmt: skip
def test_resolve_providers(requested, available, expected):
    assert resolve_providers(requested, available) == expected


def test_cuda_requested_without_onnxruntime_gpu_names_what_is_installed():
    with pytest.raises(ProviderError, match=r"CUDAExecutionProvider not available \(install onnxruntime-gpu"):
        resolve_providers("cuda", CPU_ONLY)
    with pytest.raises(ProviderError, match="installed: CPUExecutionProvider"):
        resolve_providers(["OpenVINOExecutionProvider"], CPU_ONLY)


@pytest.mark.parametrize("bad", ["gpu", [], [1, 2]])
def test_malformed_provider_requests(bad):
    with pytest.raises(ValueError):
        resolve_providers(bad, CPU_ONLY)


def test_cuda_attention_avoids_cudnn_unless_asked():
    """cuDNN flash attention re-plans per new shape (~40 ms on an H100): off by default, and only CUDA gets options."""
    entries = provider_entries([CUDA, CPU], SessionConfig())
    (name, options), cpu = entries
    assert name == CUDA and cpu == CPU
    allowed = int(options["sdpa_kernel"])
    assert allowed & 0x8 == 0 and allowed & 0x2 and allowed & 0x1  # cuDNN out; memory-efficient and flash in
    assert provider_entries([CUDA, CPU], SessionConfig(cudnn_attention=True)) == [CUDA, CPU]
    assert provider_entries([CPU], SessionConfig()) == [CPU]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has onnxruntime-gpu")
def test_explicit_cuda_on_a_cpu_machine_is_an_error_not_a_fallback(tiny_artifact):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider not available"):
        load(tiny_artifact, providers="cuda")


def test_auto_on_a_cpu_machine_runs_on_cpu(tiny_artifact):
    if CUDA in ort.get_available_providers():
        pytest.skip("auto would take CUDA here")
    assert load(tiny_artifact).provider == CPU


def _cgroup(tmp_path, **files):
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_cpu_limit(_cgroup(tmp_path, **{"cpu.max": "150000 100000\n"})) == 2
    assert cgroup_cpu_limit(_cgroup(tmp_path, **{"cpu.max": "50000 100000\n"})) == 1


def test_cgroup_v2_unlimited_and_absent(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(_cgroup(tmp_path, **{"cpu.max": "max 100000\n"})) is None


def test_cgroup_v1_quota(tmp_path):
    root = _cgroup(tmp_path, **{"cpu__cpu.cfs_quota_us": "300000", "cpu__cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root) == 3
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(root) is None


def test_thread_default_and_override(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == available_cpus() >= 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be a positive integer"):
        default_threads()


def test_session_config_is_validated():
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        SessionConfig(threads=0)
    with pytest.raises(ValueError, match="graph_optimization"):
        SessionConfig(graph_optimization="max")
