"""Distillation: a student of a tiny teacher, trained, exported, quantized and gated against the teacher."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxforge import corpus
from onnxforge.distill import DistillConfig, distill, training_texts
from onnxforge.distill.losses import embedding_loss, hidden_loss, soft_label_kl
from onnxforge.distill.student import keep_layers
from onnxforge.quantization.fidelity import embedding_fidelity
from onnxforge.runtime import load
from tests.tiny_models import make_encoder

# A random tiny teacher whose layers matter: at BERT's usual 0.02 its blocks barely move the embedding lookup, so any
# subset of them agrees with it untrained.
TEACHER = {"num_hidden_layers": 4, "initializer_range": 0.2}
FAST = DistillConfig(layers=(0, 2), epochs=2, learning_rate=1e-3, max_length=32)


def _numpy_kl(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """KL(p_teacher ‖ p_student) × T², averaged over rows, written out in numpy."""

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x / temperature - (x / temperature).max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher.astype(np.float64)), softmax(student.astype(np.float64))
    return float((p * np.log(p / q)).sum(-1).mean() * temperature**2)


def test_soft_label_kl_matches_known_values_and_a_numpy_reference():
    # T = 1, teacher (1/4, 3/4) against a uniform student: 1/4 ln(1/2) + 3/4 ln(3/2)
    value = soft_label_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]), 1.0)
    assert value.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-7)
    assert soft_label_kl(torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[1.0, -2.0, 0.5]]), 3.0).item() == pytest.approx(0)
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 5, 7)) * 3
    for temperature in (0.5, 1.0, 2.0, 4.0):
        got = soft_label_kl(torch.from_numpy(student), torch.from_numpy(teacher), temperature).item()
        assert got == pytest.approx(_numpy_kl(student, teacher, temperature), rel=1e-9)
    rows = torch.tensor([True, False, True, False, False])  # token-classify: padded rows do not count
    got = soft_label_kl(torch.from_numpy(student), torch.from_numpy(teacher), 2.0, rows).item()
    assert got == pytest.approx(_numpy_kl(student[[0, 2]], teacher[[0, 2]], 2.0), rel=1e-9)


def test_embedding_and_hidden_losses_on_known_values():
    assert embedding_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0)  # MSE 1 + (1 - 0)
    assert embedding_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)  # MSE 1/2 + 0
    hidden = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])  # the third token is padding
    real = torch.tensor([[True, True, False]])
    assert hidden_loss((hidden,), (target,), real).item() == pytest.approx(5.0)  # (1 + 9) / 2


def test_a_student_is_the_teachers_chosen_layers(tmp_path):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(make_encoder(tmp_path / "teacher", **TEACHER))
    student = keep_layers(teacher, (1, 3))
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for kept, original in zip(student.encoder.layer, (teacher.encoder.layer[1], teacher.encoder.layer[3])):
        assert kept is not original
        for (name, a), (_, b) in zip(kept.named_parameters(), original.named_parameters()):
            assert torch.equal(a, b), name
    for layers in [(), (3, 1), (0, 0), (0, 4), (-1, 2)]:
        with pytest.raises(ValueError, match=r"layers .*distinct teacher layers in increasing order, each in 0..3"):
            keep_layers(teacher, layers)


def test_training_text_is_the_calibration_half_and_files_without_held_out_sentences(tmp_path):
    split = corpus.split(corpus.load())
    extra = tmp_path / "more.txt"
    extra.write_text(f"A sentence only this file holds.\n{split.evaluation[0]}\n{split.calibration[0]}\n")
    texts = training_texts([extra])
    assert texts[: len(split.calibration)] == split.calibration
    assert texts[len(split.calibration) :] == ["A sentence only this file holds."]
    assert not set(texts) & set(split.evaluation)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A recipe with a tiny teacher and its distilled student (fp32 and int8), built once."""
    from onnxforge.build import build

    root = tmp_path_factory.mktemp("distilled")
    teacher = make_encoder(root / "teacher-source", **TEACHER)
    recipe = root / "recipe.toml"
    recipe.write_text(f"""
[student]
teacher = "tiny"
distill = {{ layers = [0, 2], epochs = 2, learning_rate = 1e-3, max_length = 32 }}
[student.variants.fp32]
gate = {{ mean_cosine = 0.9 }}
[student.variants.int8]
method = "int8"
gate = {{ mean_cosine = 0.85 }}

[tiny]
source = "{teacher}"
task = "embed"
[tiny.variants.fp32]
""")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXFORGE_CACHE", str(root / "cache"))
        results = build(recipe, root / "artifacts", only=["student/int8"])
    return root, [(v.key, built) for v, _, built in results]


def _embeddings(artifact: Path, texts: list[str]) -> np.ndarray:
    return load(artifact).embed(texts)


def test_the_student_agrees_with_its_teacher_far_better_than_untrained(built):
    root, results = built
    assert results == [("tiny/fp32", True), ("student/fp32", True), ("student/int8", True)]  # the teacher first
    student = root / "artifacts" / "student"
    record = json.loads((student / "fp32" / "manifest.json").read_text())["source"]["distillation"]
    assert record["layers"] == [0, 2] and record["teacher_layers"] == 4 and record["steps"] == 2 * math.ceil(record["texts"] / 32)
    assert record["loss_by_epoch"][1] < record["loss_by_epoch"][0]
    # recomputed from the artifacts, not read from the record: the exported student and teacher on held-out text
    texts = corpus.split(corpus.load()).evaluation[:400]
    teacher = _embeddings(root / "artifacts" / "tiny" / "fp32", texts)
    trained = embedding_fidelity(teacher, _embeddings(student / "fp32", texts))
    untrained = record["held_out_untrained"]
    assert trained["mean_cosine"] > 0.9 and untrained["mean_cosine"] < 0.5, (trained, untrained)
    assert trained["mean_cosine"] == pytest.approx(record["held_out"]["mean_cosine"], abs=0.02)


def test_the_students_int8_is_gated_against_the_teacher(built):
    root, _ = built
    artifacts = root / "artifacts"
    manifest = json.loads((artifacts / "student" / "int8" / "manifest.json").read_text())
    quality = manifest["quality"]
    assert quality["reference"] == "teacher tiny/fp32" and quality["passed"]
    evaluation = corpus.split(corpus.load()).evaluation
    teacher = _embeddings(artifacts / "tiny" / "fp32", evaluation)
    figures = embedding_fidelity(teacher, _embeddings(artifacts / "student" / "int8", evaluation))
    assert figures["mean_cosine"] == pytest.approx(quality["mean_cosine"], abs=1e-4)  # batches pad differently
    own = embedding_fidelity(_embeddings(artifacts / "student" / "fp32", evaluation),
                             _embeddings(artifacts / "student" / "int8", evaluation))  # fmt: skip
    assert own["mean_cosine"] > figures["mean_cosine"] + 0.01  # closer to its own fp32 than to the teacher


def test_a_student_missing_its_gate_against_the_teacher_is_not_built(built, tmp_path):
    from onnxforge.build import build
    from onnxforge.quantization import GateError

    root, _ = built
    recipe = (root / "recipe.toml").read_text().replace("gate = { mean_cosine = 0.9 }", "gate = { mean_cosine = 0.9999 }")
    (tmp_path / "recipe.toml").write_text(recipe)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(GateError, match=r"student/fp32: the student misses .*mean_cosine"):
        patch.setenv("ONNXFORGE_CACHE", str(root / "cache"))  # the student trained above is reused
        build(tmp_path / "recipe.toml", root / "artifacts", only=["student/fp32"], force=True)


@pytest.mark.parametrize(("entry", "message"), [
    ('teacher = "nobody"', r"teacher 'nobody' must be another model of this recipe"),
    ('teacher = "tiny"\nsource = "x"', r"a student takes its source and task from its teacher"),
    ('teacher = "tiny"\ndistill = { layer = [0] }', r"\[student.distill\] unknown keys \['layer'\]"),
])  # fmt: skip
def test_a_student_entry_is_checked_when_the_recipe_is_read(tmp_path, entry, message):
    from onnxforge.build import parse

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[tiny]\nsource = "x"\ntask = "embed"\n[tiny.variants.fp32]\n\n[student]\n{entry}\n[student.variants.fp32]\n')
    with pytest.raises(ValueError, match=message):
        parse(recipe)


def test_classify_student_learns_the_teachers_soft_labels(tmp_path):
    teacher = make_encoder(tmp_path / "teacher", task="classify", **TEACHER)
    record = distill(teacher, tmp_path / "student", "classify", replace(FAST, hidden_weight=1.0))  # layer outputs too
    assert record["held_out"]["top1_agreement"] > 0.8 and record["held_out_untrained"]["top1_agreement"] < 0.3
    # each student layer's output moved toward its teacher layer's: layer 1 was the teacher's layer 2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = corpus.split(corpus.load()).evaluation[:64]
    batch = AutoTokenizer.from_pretrained(teacher)(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    real = batch["attention_mask"].bool()
    models = {name: AutoModelForSequenceClassification.from_pretrained(tmp_path / name if name == "student" else teacher)
              for name in ("student", "teacher")}  # fmt: skip
    with torch.no_grad():
        hidden = {name: model.eval()(**batch, output_hidden_states=True).hidden_states for name, model in models.items()}
        untrained = keep_layers(models["teacher"], (0, 2))(**batch, output_hidden_states=True).hidden_states
    wanted = hidden["teacher"][3][real]
    error = ((hidden["student"][2][real] - wanted) ** 2).mean().item()
    assert error < 0.5 * ((untrained[2][real] - wanted) ** 2).mean().item()


def test_an_interrupted_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    import onnxforge.distill as distilling
    from onnxforge.cli import main

    teacher = make_encoder(tmp_path / "teacher", task="token-classify", **TEACHER)
    args = [str(teacher), "--task", "token-classify", "--layers", "1,3", "--epochs", "2", "--learning-rate", "1e-3",
            "--max-length", "32"]
    assert main(["distill", *args, "-o", str(tmp_path / "whole")]) == 0
    assert "top1" not in capsys.readouterr().out  # token-classify reports token agreement
    original = distilling._checkpoint

    def interrupted(*given: object) -> None:
        original(*given)
        raise KeyboardInterrupt  # after epoch 1's checkpoint is written

    monkeypatch.setattr(distilling, "_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["distill", *args, "-o", str(tmp_path / "resumed")])
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.distilling" / "checkpoint.pt").is_file()
    monkeypatch.setattr(distilling, "_checkpoint", original)
    assert main(["distill", *args, "-o", str(tmp_path / "resumed")]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().err
    # token-classify compares real tokens only: one row per held-out token within the 32-token limit
    from transformers import AutoTokenizer

    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(teacher)(corpus.split(corpus.load()).evaluation,
                                                                          truncation=True, max_length=32)["input_ids"]]  # fmt: skip
    record = json.loads((tmp_path / "whole" / "distillation.json").read_text())
    assert record["held_out"]["rows"] == sum(lengths) and record["held_out"]["token_agreement"] > 0.5
    whole, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not (tmp_path / ".resumed.distilling").exists()  # the checkpoint goes once the student is written
