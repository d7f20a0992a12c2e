"""onnxforge: transformer models to validated ONNX artifacts, and a torch-free runtime for them.

Import ``onnxforge.runtime`` to run artifacts (onnxruntime, tokenizers and numpy only); the build stages
(``onnxforge.export``, ``onnxforge.quantization``, ``onnxforge.build``) need the ``build`` extra.
"""

__version__ = "0.1.0"
