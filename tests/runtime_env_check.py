"""Run by `make test-runtime-env` with a venv that has only `pip install .` (onnxruntime, tokenizers, numpy).

Usage: python runtime_env_check.py EMBED_DIR GENERATE_DIR TRANSLATE_DIR — exits non-zero if a build-time library
is importable, the embed artifact does not embed, the generate artifact does not generate, stream and chat what
transformers generated from the same model (GENERATE_DIR/../expected.json, written by the build venv), or the
translate artifact does not translate (4 beams) and stream as transformers did (../translate_expected.json).
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

BUILD_ONLY = ("torch", "transformers", "optimum", "onnx", "onnxconverter_common", "sentence_transformers")

present = [name for name in BUILD_ONLY if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"runtime venv is not minimal: {present} installed")

from onnxforge import cli
from onnxforge.runtime import load

embedder = load(sys.argv[1])
vectors = embedder.embed(["An edge app ships only the runtime.", "No torch here.", ""])
assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32, (vectors.shape, vectors.dtype)
assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
assert cli.main(["inspect", sys.argv[1]]) == 0
assert cli.main(["export", "any-model", "-o", "/tmp/never-written"]) == 2  # says to install the build extra
generator = load(sys.argv[2])
expected = json.loads((Path(sys.argv[2]).parent / "expected.json").read_text())  # transformers' greedy text
text = generator.generate("An edge app", max_new_tokens=12)
assert text == expected["generate"], (text, expected["generate"])
assert "".join(generator.generate("An edge app", max_new_tokens=12, stream=True)) == text
chat = generator.chat([{"role": "user", "content": "An edge app"}], max_new_tokens=12)
assert chat == expected["chat"], (chat, expected["chat"])
translator = load(sys.argv[3])
wanted = json.loads((Path(sys.argv[3]).parent / "translate_expected.json").read_text())
translations = translator.translate(wanted["texts"], max_new_tokens=16, num_beams=4)
assert translations == wanted["outputs"], (translations, wanted["outputs"])
streamed = "".join(translator.translate(wanted["texts"][0], max_new_tokens=16, stream=True))
assert streamed == translator.translate(wanted["texts"][0], max_new_tokens=16), streamed
print(f"generate gave {len(text)} characters, translate {sum(map(len, translations))}; ", end="")
print(f"runtime-only environment OK: {vectors.shape[0]} × {embedder.dim} on {embedder.provider}, "
      f"numpy {np.__version__}, no {', '.join(BUILD_ONLY)}")
