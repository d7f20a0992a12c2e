"""`python -m bench --part translate`: onnxforge vs CTranslate2 on one Marian (OPUS-MT-sized) model, same run.

No translation model ships in a package reachable here, so the model is Marian at opus-mt-en-de's size (6+6 layers,
d_model 512, 8 heads, FFN 2048, 32,000-token vocabulary) with random weights: speed is the architecture's, and both
systems produce the same number of tokens (32 new per sentence; a random model rarely ends earlier). Agreement is
each system's tokens against fp32 PyTorch's on the same inputs, position for position. CTranslate2 converts the
same directory with its own converter and runs in its own venv (bench/.venv-peers/ct2, ``make bench-peers``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from onnxforge import corpus
from onnxforge.quantization.gate import token_agreement

from .systems import ROOT
from .translate_worker import PASSES

CACHE = ROOT / "bench" / ".cache" / "translate"
CT2_PYTHON = ROOT / "bench" / ".venv-peers" / "ct2" / "bin" / "python"
SHAPE = {"d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
         "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "max_position_embeddings": 512}  # fmt: skip
VOCAB = 32000
NEW_TOKENS = 32
SENTENCES = 48
INT8 = {"activations": "per-token", "weight_rounding": "gptq"}  # the encoder as encoders have it; the decoder weight-only


def prepare() -> dict[str, Path]:
    """The Marian source, its onnxforge fp32/int8 artifacts and its CTranslate2 fp32/int8 conversions (once)."""
    source, art, ct2 = CACHE / "source", CACHE / "artifacts" / "marian-bench", CACHE / "ct2"
    if not (source / "config.json").is_file():
        _make_source(source)
    stamp, code = art.parent / "marian-bench.code", _code_stamp()
    if not (art / "int8" / "manifest.json").is_file() or not stamp.is_file() or stamp.read_text() != code:
        import shutil

        from onnxforge.export import export
        from onnxforge.quantization import Gate, config_for, quantize

        shutil.rmtree(art, ignore_errors=True)
        export(source, art / "fp32", "translate", name="marian-bench")
        quantize(art / "fp32", art / "int8", config_for("int8", "translate", INT8), Gate({}))
        stamp.write_text(code)
    for kind in ("float32", "int8") if CT2_PYTHON.exists() else ():
        if not (ct2 / kind / "model.bin").is_file():
            subprocess.run([str(CT2_PYTHON), "-m", "ctranslate2.converters.transformers", "--model", str(source),
                            "--output_dir", str(ct2 / kind), "--quantization", kind, "--force"], check=True)  # fmt: skip
    return {"source": source, "fp32": art / "fp32", "int8": art / "int8", "ct2-fp32": ct2 / "float32",
            "ct2-int8": ct2 / "int8"}  # fmt: skip


def _code_stamp() -> str:
    """A hash of onnxforge's source: the cached artifacts are rebuilt when the code that made them changed."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "onnxforge").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _make_source(directory: Path) -> None:
    import torch
    import transformers

    from tests.tiny_models import seq2seq_tokenizer

    tokenizer = seq2seq_tokenizer("$A <|im_end|>")
    tokenizer.add_tokens([f"<w{i}>" for i in range(VOCAB - 1 - len(tokenizer))])  # a full-size vocabulary and head
    # As in OPUS-MT: the pad token is the last one, starts every target (from its zero embedding) and is never
    # generated; CTranslate2's Marian converter relies on that layout. No forced end token at the length limit (OPUS-MT
    # has one; CTranslate2 does not apply it), so that every system makes the same number of tokens.
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    pad = len(tokenizer) - 1
    config = transformers.MarianConfig(vocab_size=len(tokenizer), pad_token_id=pad, eos_token_id=2, forced_eos_token_id=None,
                                       decoder_start_token_id=pad, bad_words_ids=[[pad]], **SHAPE)  # fmt: skip
    torch.manual_seed(0)
    transformers.MarianMTModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def reference(source: Path, texts: list[str], beams: int) -> list[list[int]]:
    """fp32 PyTorch's tokens per text (start token dropped, cut before the end token)."""
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    model, tokenizer = MarianMTModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    out = []
    for start in range(0, len(texts), 16):
        batch = tokenizer(texts[start : start + 16], padding=True, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            rows = model.generate(**batch, max_new_tokens=NEW_TOKENS, num_beams=beams, do_sample=False)[:, 1:].tolist()
        out += [row[: row.index(2)] if 2 in row else row for row in rows]
    return out


def run(threads: int) -> list[dict]:
    paths = prepare()
    texts = corpus.split(corpus.load()).evaluation[:SENTENCES]
    rows, systems = [], ["onnxforge fp32", "onnxforge int8"]
    if CT2_PYTHON.exists():
        systems += ["ctranslate2 fp32", "ctranslate2 int8"]
    else:
        print(f"▸ ctranslate2 skipped: no {CT2_PYTHON} (make bench-peers)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as tmp:
        text_file = Path(tmp) / "texts.json"
        text_file.write_text(json.dumps(texts))
        for beams in (1, 4):
            wanted = reference(paths["source"], texts, beams)
            for batch in (1, 16):
                for system in systems:
                    print(f"▸ {system}, batch {batch}, beams {beams}", file=sys.stderr, flush=True)
                    python = CT2_PYTHON if system.startswith("ctranslate2") else Path(sys.executable)
                    key = ("ct2-" if system.startswith("ctranslate2") else "") + system.split()[1]
                    out = Path(tmp) / "out.json"
                    subprocess.run([str(python), "-m", "bench.translate_worker", system.split()[0], str(paths[key]),
                                    str(paths["source"]), str(text_file), str(batch), str(beams), str(threads),
                                    str(NEW_TOKENS), str(out)], check=True, cwd=ROOT)  # fmt: skip
                    found = json.loads(out.read_text())
                    rows.append({"system": system, "size_mb": _weights_mb(paths[key]), "batch": batch, "beams": beams,
                                 "sentences_per_s": len(texts) / found["seconds"],
                                 "tokens": sum(len(ids) for ids in found["ids"]),
                                 "agreement": token_agreement(wanted, found["ids"]), "peak_rss_mb": found["peak_rss_mb"],
                                 "exact": sum(a == b for a, b in zip(wanted, found["ids"])) / len(texts)})  # fmt: skip
                    rows[-1]["pass_spread"] = max(found["pass_seconds"]) / found["seconds"] - 1
                    if "session_seconds" in found:
                        rows[-1]["host_share"] = 1 - found["session_seconds"] / found["seconds"]
    return rows


def _weights_mb(directory: Path) -> float:
    """The model files' size: onnxforge's two graphs and their shared table, CTranslate2's model.bin (tokenizer files
    left out)."""
    patterns = ("*.onnx", "*.onnx_data", "model.bin")
    return sum(p.stat().st_size for pattern in patterns for p in directory.glob(pattern)) / 1e6


def markdown(rows: list[dict], title: str) -> str:
    head = ("| system | size MB | peak RSS MB | batch | beams | sentences/s | pass spread | host share | new tokens "
            "| token agreement vs torch fp32 | identical outputs |")  # fmt: skip
    lines = [f"### {title}", "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['system']} | {r['size_mb']:.1f} | {_rss(r)} | {r['batch']} | {r['beams']} | "
              f"{r['sentences_per_s']:.1f} | {_spread(r)} | {_host(r)} | {r['tokens']} | {r['agreement']:.3f} | "
              f"{r['exact']:.2f} |" for r in rows]  # fmt: skip
    if any("pass_spread" in r for r in rows):
        lines += ["", (f"sentences/s: the fastest of {PASSES} passes over the {SENTENCES} sentences, after one "
                       "warm-up batch, each system in a process of its own; pass spread: how much slower the "
                       "slowest pass was.")]  # fmt: skip
    lines += ["", ("Random weights give near-flat logits, so token agreement here shows that a system follows its own "
                   "fp32 decoding, not translation fidelity: any int8 moves such tokens more than a trained model's "
                   "would, and no fidelity claim rests on this column.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _host(row: dict) -> str:
    """The share of onnxforge's time outside onnxruntime's run (blank for CTranslate2, or a row measured before)."""
    return f"{row['host_share']:.0%}" if "host_share" in row else ""


def _spread(row: dict) -> str:
    """How much slower the slowest timed pass was than the fastest (blank for a row measured in one pass)."""
    return f"{row['pass_spread']:.0%}" if "pass_spread" in row else ""


def _rss(row: dict) -> str:
    """Peak RSS, or blank for a row measured before the column existed."""
    return f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else ""
