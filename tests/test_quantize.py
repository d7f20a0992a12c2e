"""int8 quantization of a fused graph, and the quality gate's pass and fail paths (tiny model)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import quantize_dynamic

from onnxforge import corpus
from onnxforge.artifact import verify
from onnxforge.export.graph import op_counts
from onnxforge.quantization import Gate, Int8Config, quantize
from onnxforge.quantization.fidelity import recall_at_k, row_cosines
from onnxforge.runtime import load
from tests.util import cosines

EVAL = corpus.split(corpus.load()).evaluation[:120]


def test_plain_quantize_dynamic_fails_on_fused_graph(tiny_artifact, tmp_path):
    """Why int8.prepare runs symbolic shape inference first: without it onnxruntime cannot type contrib ops."""
    with pytest.raises(RuntimeError, match="Unable to find data type"):
        quantize_dynamic(str(tiny_artifact / "model.onnx"), str(tmp_path / "q.onnx"), per_channel=True)


def test_fused_graph_quantizes_to_integer_kernels(tiny_artifact, tmp_path):
    manifest = quantize(tiny_artifact, tmp_path / "int8", Int8Config(), Gate({"mean_cosine": 0.9}), texts=EVAL)
    ops = op_counts(tmp_path / "int8" / "model.onnx")
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) == 12  # 2 layers x (Q,K,V,O,up,down)
    assert ops.get("MultiHeadAttention") == 2 and "MatMul" not in ops
    assert manifest.precision["per_channel"] is True and manifest.precision["weights"] == "int8"
    assert manifest.quality["texts"] == len(EVAL)
    fp32, int8 = (load(d, providers="cpu").embed(EVAL) for d in (tiny_artifact, tmp_path / "int8"))
    found = cosines(fp32, int8).mean()  # computed here, not by the gate
    assert 0.9 <= found < 1.0 and found == pytest.approx(manifest.quality["mean_cosine"], abs=1e-6)
    assert verify(tmp_path / "int8").variant == "int8"


def test_quantized_weights_are_per_channel(tiny_artifact, tmp_path):
    quantize(tiny_artifact, tmp_path / "int8", texts=EVAL)
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale") and t.dims]
    assert scales and all(t.dims[0] > 1 for t in scales)


def test_gate_with_unknown_figure_is_an_error(tiny_artifact, tmp_path):
    with pytest.raises(ValueError, match=r"gate names unknown figures \['accuracy'\]"):
        quantize(tiny_artifact, tmp_path / "int8", gate=Gate({"accuracy": 0.9}), texts=EVAL)


def test_metrics_on_known_values():

    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(row_cosines(a, np.array([[1.0, 0.0], [1.0, 1.0]])), [1.0, 2**-0.5])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 8))
    assert recall_at_k(points, points, 10) == 1.0
    assert recall_at_k(points, rng.normal(size=(50, 8)), 10) < 0.5
    with pytest.raises(ValueError, match="needs more than 10 items"):
        recall_at_k(points[:10], points[:10], 10)


def _embed(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [session.run(["sentence_embedding"], feed)[0] for feed in feeds]


def _feeds(tiny_artifact, texts=EVAL[:64]):
    from onnxforge.quantization.calibration import text_feeds
    from onnxforge.runtime import open_artifact

    return text_feeds(open_artifact(tiny_artifact, providers="cpu"), texts)


def test_smoothing_keeps_the_float_function(tiny_artifact, tmp_path):
    """SmoothQuant only moves scale from activations into weights: the float graph computes the same thing."""

    from onnxforge.quantization.int8 import prepare

    feeds = _feeds(tiny_artifact)
    plain = prepare(tiny_artifact / "model.onnx", tmp_path / "plain.onnx", Int8Config(), feeds)
    smoothed = prepare(tiny_artifact / "model.onnx", tmp_path / "smooth.onnx", Int8Config(smooth_alpha=0.5), feeds)
    assert op_counts(smoothed).get("Mul", 0) >= op_counts(plain).get("Mul", 0) + 8  # one per weight-MatMul input
    for a, b in zip(_embed(plain, feeds), _embed(smoothed, feeds)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_smoothing_helps_int8_on_activation_outliers(outlier_artifact, tmp_path):
    from onnxforge.runtime import load

    quantize(outlier_artifact, tmp_path / "plain", Int8Config(), Gate(), texts=EVAL)
    quantize(outlier_artifact, tmp_path / "smooth", Int8Config(smooth_alpha=0.7), Gate(), texts=EVAL)
    reference = load(outlier_artifact, providers="cpu").embed(EVAL)
    error = lambda d: float(1 - cosines(reference, load(d, providers="cpu").embed(EVAL)).mean())
    assert error(tmp_path / "smooth") < 0.85 * error(tmp_path / "plain")  # measured 1.8e-5 vs 2.5e-5


def test_search_finds_the_fewest_nodes_to_keep_apart(tiny_artifact, tmp_path):
    """The search's logic against a judge that passes once 3 or more MatMuls are blockwise int8."""
    from onnxforge.quantization.int8 import prepare
    from onnxforge.quantization.search import greedy, sensitivity

    feeds = _feeds(tiny_artifact)
    prepared = prepare(tiny_artifact / "model.onnx", tmp_path / "prepared.onnx", Int8Config(), feeds)
    ranking = sensitivity(prepared, Int8Config(), feeds)
    errors = [e for _, e in ranking]
    assert len(ranking) == 12 and errors == sorted(errors, reverse=True) and errors[-1] > 0

    def judge(path):
        blockwise = op_counts(path).get("MatMulNBits", 0)
        return {"blockwise": float(blockwise)}, blockwise >= 3

    out = tmp_path / "chosen.onnx"
    config, steps = greedy(prepared, Int8Config(max_keep=10), [n for n, _ in ranking], feeds, judge, out)
    assert config.keep == tuple(n for n, _ in ranking[:3])
    assert [(s.kept, s.passed) for s in steps] == [(0, False), (1, False), (2, False), (3, True), (4, True)]
    assert op_counts(out).get("MatMulNBits") == 3  # the chosen candidate, not the last one tried


def test_search_runs_inside_quantize_and_is_reported(tiny_artifact, tmp_path):
    config = Int8Config(max_keep=4, smooth_alpha=0.5)
    manifest = quantize(tiny_artifact, tmp_path / "int8", config, Gate({"mean_cosine": 0.99}), texts=EVAL)
    assert manifest.quality["search"][0]["kept"] == 0 and manifest.quality["search"][0]["passed"]
    assert manifest.precision["kept"] == [] and manifest.precision["smooth_alpha"] == 0.5
    # nothing kept apart passed at once, so no node was ranked (a ranking costs a build per node)
    assert "sensitivity" not in manifest.quality and manifest.quality["speed_vs_fp32"] > 0


def test_a_search_margin_keeps_more_apart_than_the_held_out_gate_alone_would(outlier_artifact, tmp_path):
    gate = Gate({"mean_cosine": 0.9, "recall_at_10": 0.8, "perplexity_retention": 1.0})
    assert gate.tightened(0.5).minimums == pytest.approx({"mean_cosine": 0.95, "recall_at_10": 0.9,
                                                          "perplexity_retention": 1.0})  # fmt: skip
    plain = quantize(outlier_artifact, tmp_path / "plain", Int8Config(max_keep=4), Gate({"mean_cosine": 0.9}), texts=EVAL)
    first = plain.quality["search"][0]
    assert first["passed"] and plain.precision["kept"] == []
    margin = 1 - (1 - first["figures"]["mean_cosine"]) / (2 * 0.1)  # the search now wants half 0 kept's error
    config = Int8Config(max_keep=4, search_margin=margin)
    strict = quantize(outlier_artifact, tmp_path / "strict", config, Gate({"mean_cosine": 0.9}), texts=EVAL)
    assert not strict.quality["search"][0]["passed"] and strict.precision["kept"] and strict.quality["passed"]
    assert strict.quality["sensitivity"][0]["node"] == strict.precision["kept"][0]  # the worst node went first
    with pytest.raises(ValueError, match="search_margin must be in"):
        Int8Config(search_margin=1.0)


def test_search_that_cannot_pass_reports_and_writes_nothing(tiny_artifact, tmp_path):
    from onnxforge.quantization import GateError

    out = tmp_path / "int8"
    with pytest.raises(GateError, match=r"Search on calibration text: 0 kept apart .* No artifact was written"):
        quantize(tiny_artifact, out, Int8Config(max_keep=2), Gate({"mean_cosine": 0.999999999}), texts=EVAL)
    assert not out.exists()


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy"])
def test_static_qdq_with_each_calibration(tiny_artifact, tmp_path, calibration):
    config = Int8Config(activations="static", calibration=calibration, calibration_texts=64)
    manifest = quantize(tiny_artifact, tmp_path / "int8", config, Gate({"mean_cosine": 0.9}), texts=EVAL)
    ops = op_counts(tmp_path / "int8" / "model.onnx")
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert manifest.precision["activations"] == f"uint8-static-{calibration}"


def test_calibration_and_evaluation_may_not_overlap(tiny_artifact, tmp_path):
    with pytest.raises(ValueError, match="in both the calibration and the evaluation set"):
        quantize(tiny_artifact, tmp_path / "int8", texts=EVAL, calibration=EVAL[:30])


def test_bad_int8_settings_are_named():
    with pytest.raises(ValueError, match="activations 'sometimes'"):
        Int8Config(activations="sometimes")
    with pytest.raises(ValueError, match="smooth_alpha must be in"):
        Int8Config(smooth_alpha=1.5)
    with pytest.raises(ValueError, match="keep_as 'int4'"):
        Int8Config(keep_as="int4")


def test_vocabulary_tables_become_int8_rows_that_gather_what_they_held(tmp_path):
    """A float table only gathered from (≥ 1,024 rows) is stored as int8 rows and a scale per row; the graph still
    gathers float rows, each within half a step of the original; small tables and tables a MatMul reads stay."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.quantization.tables import int8_rows

    rng = np.random.default_rng(0)
    vocab, small, weight = (rng.standard_normal(s).astype(np.float32) for s in ((2048, 16), (512, 16), (2048, 16)))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["vocab", "ids"], ["a"]), helper.make_node("Gather", ["small", "ids"], ["b"]),
         helper.make_node("Gather", ["weight", "ids"], ["c"]), helper.make_node("MatMul", ["x", "weight"], ["d"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcd"],
        [numpy_helper.from_array(v, n) for v, n in ((vocab, "vocab"), (small, "small"), (weight, "weight"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert int8_rows(model) == ["vocab"]
    ids = np.array([0, 7, 511])
    a, b, c, _ = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids, "x": np.ones((1, 2048), np.float32)})
    step = np.abs(vocab[ids]).max(1, keepdims=True) / 127
    assert np.all(np.abs(a - vocab[ids]) <= step / 2 + 1e-6) and not np.array_equal(a, vocab[ids])
    assert np.array_equal(b, small[ids]) and np.array_equal(c, weight[ids])


def test_a_vocabulary_as_4_bit_rows_gathers_its_blocks_in_the_ids_shape():
    """4-bit rows (the web variant's vocabulary): packed two codes a byte with a zero point and an fp16 scale per
    block of 32; the graph gathers (ids…, width) float rows equal to those blocks de-quantized, with standard
    operators only (any onnxruntime build, WASM included)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.quantization.tables import quantized_rows
    from onnxforge.quantization.weights import fit_blocks

    vocab = np.random.default_rng(2).standard_normal((2048, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["vocab", "ids"], ["rows"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(vocab, "vocab")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert quantized_rows(model, 4) == ["vocab"]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert stored["vocab_int4"].shape == (2048, 32) and stored["vocab_scale"].dtype == np.float16
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    ids = np.array([[0, 7, 511], [3, 3, 2047]])
    (rows,) = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})
    codes, scales, zeros = fit_blocks(vocab.T, 32)  # (rows, blocks, 32)
    blocks = (codes.astype(np.float32) - zeros[..., None]) * scales.astype(np.float16).astype(np.float32)[..., None]
    assert rows.shape == (2, 3, 64)
    np.testing.assert_allclose(rows, blocks.reshape(2048, 64)[ids], rtol=1e-6, atol=1e-6)
    assert np.abs(rows - vocab[ids]).max() < 0.6 * (vocab.max() - vocab.min()) / 15


def test_a_table_gathered_inside_if_branches_becomes_int8_rows_once(tmp_path):
    """A merged decoder reads its embedding table inside both branches of an If: the outer table is replaced once,
    each branch gathers its rows from the int8 copy, and both give the rows within half a step."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.quantization.tables import int8_rows

    vocab = np.random.default_rng(1).standard_normal((2048, 8)).astype(np.float32)
    branch = lambda name: helper.make_graph([helper.make_node("Gather", ["vocab", "ids"], [f"{name}_rows"])], name, [],
                                            [helper.make_tensor_value_info(f"{name}_rows", TensorProto.FLOAT, None)])  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["rows"], then_branch=branch("then"), else_branch=branch("else"))], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], [numpy_helper.from_array(vocab, "vocab")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert int8_rows(model) == ["vocab"]
    assert [t.name for t in model.graph.initializer] == ["vocab_int8", "vocab_scale"]
    session = ort.InferenceSession(model.SerializeToString())
    ids = np.array([3, 2047])
    step = np.abs(vocab[ids]).max(1, keepdims=True) / 127
    for flag in (True, False):
        (rows,) = session.run(None, {"ids": ids, "flag": np.array([flag])})
        assert np.all(np.abs(rows - vocab[ids]) <= step / 2 + 1e-6) and not np.array_equal(rows, vocab[ids])


def test_a_tied_vocabulary_is_stored_once_and_both_graphs_gather_the_projection_blocks(tmp_path):
    """A decoder whose table is its logits projection transposed, and an encoder with the same table: after
    quantize_tied + write_shared, one file holds the projection's 8-bit blocks and both graphs gather their rows
    from it, exactly (code − 128) · scale, within half a step of the float table; the logits use the same blocks."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.export.graph import SHARED_FILE, write_shared
    from onnxforge.quantization.shared_table import quantize_tied
    from onnxforge.quantization.weights import WeightOnlyConfig

    rng = np.random.default_rng(2)
    vocab = rng.standard_normal((300, 64)).astype(np.float32)
    value = lambda name, kind, shape: helper.make_tensor_value_info(name, kind, shape)
    rows_out = value("rows", TensorProto.FLOAT, None)
    decoder = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]), helper.make_node("MatMul", ["hidden", "head"], ["logits"], name="head")],
        "decoder", [value("ids", TensorProto.INT64, [None]), value("hidden", TensorProto.FLOAT, [None, 64])],
        [rows_out, value("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(vocab, "table"), numpy_helper.from_array(np.ascontiguousarray(vocab.T), "head")],
    )  # fmt: skip
    encoder = helper.make_graph([helper.make_node("Gather", ["embed", "ids"], ["rows"])], "encoder",
                                [value("ids", TensorProto.INT64, [2, None])], [rows_out],
                                [numpy_helper.from_array(vocab, "embed")])  # fmt: skip
    for graph, name in ((decoder, "decoder.onnx"), (encoder, "encoder-src.onnx")):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    config = WeightOnlyConfig(bits=8, symmetric=True, block_size=32)
    used, shared = quantize_tied(tmp_path / "decoder.onnx", out / "decoder.onnx", tmp_path / "encoder-src.onnx",
                                 out / "encoder.onnx", config)  # fmt: skip
    assert used == config  # 32 divides K = 64
    write_shared([out / "encoder.onnx", out / "decoder.onnx"], shared)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", SHARED_FILE]
    for name in ("encoder.onnx", "decoder.onnx"):
        inline = onnx.load(out / name, load_external_data=False).graph.initializer
        assert not [t.name for t in inline if t.data_location != TensorProto.EXTERNAL and np.prod(t.dims) >= vocab.size]
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(out / "decoder.onnx").graph.initializer}
    blocks, scales = weights[shared[0]], weights[shared[1]].reshape(300, 2, 1)
    expected = ((blocks.astype(np.float32) - 128) * scales).reshape(300, 64)
    assert np.all(np.abs(expected - vocab) <= np.repeat(scales.reshape(300, 2), 32, axis=1) / 2 + 1e-6)
    ids = np.array([[0, 299, 7], [5, 5, 1]])
    (rows,) = ort.InferenceSession(out / "encoder.onnx").run(None, {"ids": ids})
    np.testing.assert_allclose(rows, expected[ids], rtol=0, atol=1e-6)
    hidden = rng.standard_normal((3, 64)).astype(np.float32)
    rows, logits = ort.InferenceSession(out / "decoder.onnx").run(None, {"ids": ids[0], "hidden": hidden})
    np.testing.assert_allclose(rows, expected[ids[0]], rtol=0, atol=1e-6)
    wanted = hidden @ expected.T  # less MatMulNBits' own int8 rounding of the activations (accuracy level 4)
    assert np.abs(logits - wanted).max() < 0.02 * np.abs(wanted).max()


def test_a_sinusoidal_position_table_is_computed_and_a_learned_one_kept(tmp_path):
    """A graph gathering from transformers' own Marian sinusoid table (positions of shape (2, 3), as a batch has
    them) and from a learned table: the sinusoid table is gone from the file and the graph gives its rows within
    1e-5; the learned table stays, and so do its rows."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    from onnxforge.quantization.positions import compute_positions

    table = MarianSinusoidalPositionalEmbedding(128, 32)
    table._init_weight()  # what MarianPreTrainedModel's weight init calls
    sinusoid = table.weight.detach().numpy()
    learned = np.random.default_rng(3).standard_normal((128, 32)).astype(np.float32)
    value = lambda name, kind: helper.make_tensor_value_info(name, kind, None)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["sinusoid", "positions"], ["fixed"]), helper.make_node("Gather", ["learned", "positions"], ["own"])],
        "positions", [value("positions", TensorProto.INT64)], [value("fixed", TensorProto.FLOAT), value("own", TensorProto.FLOAT)],
        [numpy_helper.from_array(sinusoid, "sinusoid"), numpy_helper.from_array(learned, "learned")],
    )  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    assert compute_positions(path) == ["sinusoid"]
    kept = {t.name for t in onnx.load(path).graph.initializer}
    assert "learned" in kept and "sinusoid" not in kept
    positions = np.array([[0, 1, 127], [64, 5, 5]])
    fixed, own = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"positions": positions})
    np.testing.assert_allclose(fixed, sinusoid[positions], atol=1e-5)
    assert np.array_equal(own, learned[positions])
    assert compute_positions(path) == []  # nothing left to replace
