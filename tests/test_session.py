"""Provider choice and thread defaults (the CUDA logic is tested here on CPU; see tests marked gpu)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from onnxforge.runtime import load, session
from onnxforge.runtime.session import (
    CPU,
    CUDA,
    THREADS_ENV,
    ProviderError,
    SessionConfig,
    available_cpus,
    cgroup_cpu_limit,
    create_session,
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


def test_cpu_sessions_keep_layer_norms_split(tmp_path, monkeypatch):
    """Add + LayerNormalization as export writes them for the CPU stay two ops in the session (onnxruntime would fuse
    them back into its slower SkipLayerNormalization), and still add and normalize."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
        "norm", [vi("x", TensorProto.FLOAT, ["n", "s", 8]), vi("skip", TensorProto.FLOAT, ["n", "s", 8])],
        [vi("y", TensorProto.FLOAT, ["n", "s", 8])],
        [numpy_helper.from_array(np.full(8, 2.0, np.float32), "gamma"), numpy_helper.from_array(np.ones(8, np.float32), "beta")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    optimized = tmp_path / "optimized.onnx"
    options = session.session_options

    def writing_options(config):
        made = options(config)
        made.optimized_model_filepath = str(optimized)
        return made

    monkeypatch.setattr(session, "session_options", writing_options)
    x, skip = np.arange(48, dtype=np.float32).reshape(2, 3, 8), np.ones((2, 3, 8), np.float32)
    (y,) = create_session(model.SerializeToString(), SessionConfig(providers="cpu")).run(None, {"x": x, "skip": skip})
    ops = [node.op_type for node in onnx.load(optimized).graph.node]
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops, ops
    total = x + skip
    wanted = 2 * (total - total.mean(-1, keepdims=True)) / np.sqrt(total.var(-1, keepdims=True) + 1e-5) + 1
    np.testing.assert_allclose(y, wanted, rtol=1e-5, atol=1e-5)
