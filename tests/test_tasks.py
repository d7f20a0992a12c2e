"""Every encoder family × task: exported, run by onnxforge's pipeline and by transformers' on the same inputs.

Labels, spans and tokens must be the same and scores within 1e-4 (fp32). Models are tiny random-weight
configs of each family (``tests/tiny_models.py``), exported through the same path as the real ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.runtime import load
from tests.tiny_models import FAMILIES, make_encoder
from tests.util import cosines, first_outputs

TEXTS = ["Ada Lovelace wrote the first program in London.", "The cat sat on the mat.",
         "Guido van Rossum created Python at CWI in Amsterdam, the Netherlands."] + corpus.load()[:5]  # fmt: skip
TOL = 1e-4


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(family, task) → (source dir, artifact dir), exported once per module."""
    from onnxforge.export import export

    made: dict[tuple[str, str], tuple] = {}

    def get(family: str, task: str):
        if (family, task) not in made:
            root = tmp_path_factory.mktemp(f"{family}-{task}")
            source = make_encoder(root / "source", family, task=task)
            out = root / "artifact" / "fp32"
            manifest = export(source, out, task, name=f"{family}-{task}")
            made[family, task] = (source, out, manifest)
        return made[family, task]

    return get


def _hf_pipeline(kind: str, source):
    import transformers
    from transformers import AutoTokenizer, pipeline

    from onnxforge.tasks import get_task

    task = {"classify": "text-classification", "token-classify": "token-classification", "answer": "question-answering",
            "fill-mask": "fill-mask"}[kind]  # fmt: skip
    model = getattr(transformers, get_task(kind).model_class).from_pretrained(source)
    return pipeline(task, model=model, tokenizer=AutoTokenizer.from_pretrained(source), device="cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_classify_matches_transformers(build, family):
    source, out, manifest = build(family, "classify")
    ours = load(out).classify(TEXTS, top_k=3)
    theirs = _hf_pipeline("classify", source)(TEXTS, top_k=3)
    for a, b in zip(ours, theirs):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=TOL)
    assert manifest.parity["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "max", "average"])
@pytest.mark.parametrize("family", FAMILIES)
def test_entities_match_transformers(build, family, aggregation):
    source, out, _ = build(family, "token-classify")
    ours = load(out).entities(TEXTS, aggregation=aggregation)
    theirs = _hf_pipeline("token-classify", source)(TEXTS, aggregation_strategy=aggregation)
    for a, b in zip(ours, theirs):
        key = "entity" if aggregation == "none" else "entity_group"
        assert [(x[key], x["word"], x["start"], x["end"]) for x in a] == \
            [(x[key], x["word"], x["start"], x["end"]) for x in b]  # fmt: skip
        np.testing.assert_allclose([x["score"] for x in a], [float(x["score"]) for x in b], atol=TOL)
    assert any(ours), "random heads should find some entities"


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_matches_transformers_across_windows(build, family):
    source, out, _ = build(family, "answer")
    context = " ".join(corpus.load()[:40])  # ~1,000 tokens: several 128-token-stride windows
    qa = load(out)
    hf = _hf_pipeline("answer", source)
    for question in ("Who wrote it?", "What does the interpreter do?"):
        for top_k in (1, 3):
            ours = qa.answer(question, context, top_k=top_k, max_seq_len=128, doc_stride=64)
            theirs = hf(question=question, context=context, top_k=top_k, max_seq_len=128, doc_stride=64)
            ours, theirs = (x if isinstance(x, list) else [x] for x in (ours, theirs))
            assert [(a["answer"], a["start"], a["end"]) for a in ours] == \
                [(b["answer"], b["start"], b["end"]) for b in theirs]  # fmt: skip
            np.testing.assert_allclose([a["score"] for a in ours], [b["score"] for b in theirs], atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_fill_mask_matches_transformers(build, family):
    source, out, _ = build(family, "fill-mask")
    texts = ["The capital of France is [MASK].", "Python is a [MASK] language, isn't it?"]
    ours = load(out).fill(texts, top_k=5)
    theirs = _hf_pipeline("fill-mask", source)(texts, top_k=5)
    for a, b in zip(ours, theirs):
        assert [(x["token"], x["token_str"], x["sequence"]) for x in a] == \
            [(x["token"], x["token_str"], x["sequence"]) for x in b]  # fmt: skip
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=TOL)


def _mean_pooled(source, texts: list[str], **config) -> np.ndarray:
    """transformers' last hidden state, mean-pooled over each text's tokens and L2-normalised (what a plain encoder
    exports with)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    batch = AutoTokenizer.from_pretrained(source)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(source, **config).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_matches_transformers(build, family):
    source, out, _ = build(family, "embed")
    np.testing.assert_allclose(load(out).embed(TEXTS), _mean_pooled(source, TEXTS), atol=TOL)


def test_modernbert_reads_past_its_local_window(build):
    """The tiny ModernBERT's 8-token local window binds on the test texts: with it widened, transformers disagrees
    with the export, which kept it."""
    source, out, _ = build("modernbert", "embed")
    assert np.abs(_mean_pooled(source, TEXTS, local_attention=1024) - load(out).embed(TEXTS)).max() > 0.01


def test_answers_come_from_every_window(build):
    """Spans are scored in every window: with many answers asked for, they reach the end of a long context."""
    _, out, _ = build("bert", "answer")
    context = " ".join(corpus.load()[:30])
    best = load(out).answer("Where?", context, top_k=200, max_seq_len=64, doc_stride=32)
    first_window_end = 64 * 8  # a 64-token window of English prose covers well under 512 characters
    assert max(a["end"] for a in best) > 0.8 * len(context) > first_window_end
    assert all(context[a["start"] : a["end"]] == a["answer"] for a in best)


def test_task_input_errors_are_named(build):
    _, out, _ = build("bert", "fill-mask")
    with pytest.raises(ValueError, match=r"texts\[1\] has 0 \[MASK\] tokens"):
        load(out).fill(["a [MASK] b", "no mask here"])
    _, out, _ = build("bert", "classify")
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        load(out).classify(["x"], top_k=0)
    _, out, _ = build("bert", "token-classify")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        load(out).entities(["x"], aggregation="mean")
    _, out, _ = build("bert", "answer")
    with pytest.raises(ValueError, match="context is empty"):
        load(out).answer("Who?", "   ")
    with pytest.raises(ValueError, match=r"doc_stride \(64\) must be smaller than max_seq_len \(64\)"):
        load(out).answer("Who?", "Somebody did.", max_seq_len=64, doc_stride=64)


@pytest.mark.parametrize(
    "task, gate",
    [
        ("classify", {"top1_agreement": 0.9}),
        ("token-classify", {"token_agreement": 0.9}),
        ("answer", {"span_agreement": 0.7}),
        ("fill-mask", {"top5_overlap": 0.7}),
    ],
)
def test_int8_of_each_task_is_gated_on_its_own_figure(build, tmp_path, task, gate):
    """The accuracy-aware int8 path, unchanged, on each task head: its own fidelity figure in the gate."""
    from onnxforge.quantization import Gate, Int8Config, quantize

    _, out, _ = build("bert", task)
    held_out = corpus.split(corpus.load()).evaluation[:150]
    config = Int8Config(activations="per-token", weight_rounding="gptq", smooth_alpha=0.6, max_keep=2)  # the recipe's
    manifest = quantize(out, tmp_path / "int8", config, Gate(gate), texts=held_out)
    assert set(manifest.quality["gate"]) == set(gate)
    # computed here from plain onnxruntime sessions: int8's raw head outputs follow fp32's on every text
    (fp32, mask), (int8, _) = (first_outputs(d, held_out[:32]) for d in (out, tmp_path / "int8"))
    for a, b, m in zip(fp32, int8, mask):
        real = (m > 0) if a.ndim > 1 else slice(None)  # per-token outputs: the text's own tokens
        assert cosines(a[real].reshape(1, -1), b[real].reshape(1, -1))[0] > 0.99
    assert manifest.quality["search"][0]["kept"] == 0 and manifest.precision["activations"] == "uint8-per-token"
    assert load(tmp_path / "int8").task == task


def test_cli_run_prints_each_task(build, capsys):
    from onnxforge.cli import main

    _, out, _ = build("bert", "classify")
    assert main(["run", str(out), "A fine day.", "--top-k", "2"]) == 0
    assert capsys.readouterr().out.count("A fine day.") == 2
    _, out, _ = build("bert", "answer")
    assert main(["run", str(out), "--question", "Who?", "--context", "Ada wrote it."]) == 0
    assert "answer" in capsys.readouterr().out
    _, out, _ = build("bert", "fill-mask")
    assert main(["run", str(out), "Paris is the [MASK] of France."]) == 0
    assert "Paris is the" in capsys.readouterr().out
    assert main(["run", str(out)]) == 1
    assert "give at least one text" in capsys.readouterr().err


def test_the_task_tables_name_the_same_tasks():
    """A task is one row of ``TASKS``; its pipeline, gate figures, CLI runner and server batching are rows in tables
    of their own modules, which must name only (and, for pipelines and figures, every one of) those tasks."""
    from onnxforge.cli import RUNNERS
    from onnxforge.quantization.gate import FIGURES
    from onnxforge.runtime.pipelines import PIPELINES
    from onnxforge.server.app import BATCHED_TASKS
    from onnxforge.tasks import HF_TASKS, TASKS

    assert set(PIPELINES) == set(TASKS) and all(PIPELINES[name].task == name for name in TASKS)
    assert set(FIGURES) == set(HF_TASKS)  # every task exported from a model directory can be quantized and gated
    assert set(RUNNERS) <= set(TASKS) and set(BATCHED_TASKS) <= set(TASKS)
    assert all(name == task.name for name, task in TASKS.items())
