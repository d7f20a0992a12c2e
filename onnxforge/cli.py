"""The ``onnxforge`` command: a thin layer over the library. Build commands need the ``build`` extra."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .artifact import ArtifactError, Manifest, read_manifest
from .build import FORMATS
from .cpu import this_cpu
from .manifest_table import cpu_line, manifest_rows, summary_rows
from .table import fmt, render
from .tasks import HF_TASKS

BUILD_HINT = "this command needs the build tools: pip install 'onnxforge[build]'"


def cmd_build(args: argparse.Namespace) -> None:
    from .build import build

    results = build(args.recipe, args.root, args.only, args.force)
    items = [(v.key, m, "built" if built else "up to date") for v, m, built in results]
    print(summary_rows(items))


def cmd_export(args: argparse.Namespace) -> None:
    from .export import ExportConfig, export

    manifest = export(args.model, args.output, args.task, config=ExportConfig(opset=args.opset, target=args.target, graph=args.graph))
    print(summary_rows([(str(args.output), _formatted(args, manifest), "built")]))


def _formatted(args: argparse.Namespace, manifest: Manifest) -> Manifest:
    """``--format ort`` / ``transformers.js``: the artifact just written, re-laid out (build.reformat)."""
    from .build import reformat

    return reformat(Path(args.output), args.format) or manifest


def _gate(pairs: list[str]) -> dict[str, float]:
    gate = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            gate[name] = float(value)
        except ValueError:
            raise ValueError(f"--gate takes FIGURE=MINIMUM (e.g. mean_cosine=0.99), got {pair!r}") from None
        if not sep or not name:
            raise ValueError(f"--gate takes FIGURE=MINIMUM (e.g. mean_cosine=0.99), got {pair!r}")
    return gate


def _lines(path: Path | None) -> list[str] | None:
    """One text per non-empty line of a UTF-8 file (``--calibration`` / ``--evaluation``)."""
    if path is None:
        return None
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 20:
        raise ValueError(f"{path}: {len(texts)} texts; quality figures need at least 20 (one per line)")
    return texts


def cmd_quantize(args: argparse.Namespace) -> None:
    from .quantization import Gate, config_for, quantize, weight_only

    task = read_manifest(args.input).task
    if weight_only(args.to, task, {"activations": args.activations} if args.activations else {}):
        settings = {"block_size": args.block_size, "symmetric": args.symmetric}
    elif args.to == "int8":
        settings = {
            "activations": args.activations or "dynamic", "calibration": args.calibration_method, "op_types": tuple(args.op_types),
            "per_channel": not args.per_tensor, "smooth_alpha": args.smooth_alpha, "max_keep": args.max_keep,
            "keep_as": args.keep_as, "search_margin": args.search_margin, "weight_rounding": args.weight_rounding,
        }  # fmt: skip
    else:
        settings = {}
    config = config_for(args.to, task, settings)
    manifest = quantize(args.input, args.output, config, Gate(_gate(args.gate)), texts=_lines(args.evaluation),
                        calibration=_lines(args.calibration), gguf=args.gguf, teacher=args.teacher)  # fmt: skip
    print(summary_rows([(str(args.output), _formatted(args, manifest), "built")]))


def cmd_distill(args: argparse.Namespace) -> None:
    from .distill import DistillConfig, distill

    config = DistillConfig(layers=_layers(args.layers), ffn_keep=args.ffn_keep, epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, temperature=args.temperature,
                           hidden_weight=args.hidden_weight, max_length=args.max_length, seed=args.seed)  # fmt: skip
    record = distill(args.teacher, args.output, args.task, config, args.text)
    untrained = record["held_out_untrained"]
    rows = [[name, fmt(untrained[name]), fmt(value)] for name, value in record["held_out"].items() if name in untrained]
    kept, of = record["ffn_neurons"]
    neurons = f"feed-forward neurons {kept}/{of}, " if kept != of else ""
    print(f"{args.output}: layers {record['layers']} of {record['teacher_layers']}, {neurons}{record['texts']} texts, "
          f"{record['steps']} steps, {record['training_seconds']:.0f} s; held-out figures vs the teacher:")  # fmt: skip
    print(render(["figure", "untrained", "distilled"], rows))


def _layers(text: str | None) -> tuple[int, ...]:
    """``--layers 0,2,4`` → (0, 2, 4); none → () (every other layer)."""
    try:
        return tuple(int(part) for part in text.split(",")) if text else ()
    except ValueError:
        raise ValueError(f"--layers takes teacher layer numbers separated by commas (e.g. 0,2,4), got {text!r}") from None


def cmd_inspect(args: argparse.Namespace) -> None:
    print(render(["field", "value"], manifest_rows(read_manifest(args.artifact))))


def cmd_families(args: argparse.Namespace) -> None:
    from .export.families import HEADERS, rows

    print(render(HEADERS, rows()))


class VerifyError(RuntimeError):
    """An artifact's figures, measured again on this machine, miss its gate."""


def cmd_verify(args: argparse.Namespace) -> None:
    from . import corpus
    from .quantization.gate import Gate, measure
    from .runtime import open_artifact

    candidate = open_artifact(args.artifact, providers="cpu")
    m = candidate.manifest
    if "gate" not in m.quality:
        raise ValueError(f"{args.artifact}: {m.variant} has no quality gate to verify (a reference variant?)")
    reference_dir = args.reference or args.artifact.parent / m.parity.get("inherited_from", "fp32")
    reference = open_artifact(reference_dir, providers="cpu")
    texts = (_lines(args.evaluation) or corpus.split(corpus.load()).evaluation)[: args.texts]
    here = measure(m.task, reference, candidate, texts)
    gate = Gate(m.quality["gate"])
    rows = [[name, fmt(m.quality.get(name), 5), fmt(here[name], 5), fmt(low), "miss" if here[name] < low else "ok"]
            for name, low in gate.minimums.items()]  # fmt: skip
    rows += [[name, fmt(m.quality.get(name), 5), fmt(value, 5), "", ""] for name, value in here.items()
             if isinstance(value, float) and name not in gate.minimums]  # fmt: skip
    print(render(["figure", "manifest", "here", "minimum", ""], rows))
    print(f"manifest measured on {cpu_line(m.quality.get('measured_on', {}))} with {m.quality.get('texts')} texts;"
          f" here: {cpu_line(this_cpu().record())}, {len(texts)} texts vs {reference_dir}")  # fmt: skip
    if failures := gate.failures(here):
        raise VerifyError(f"{args.artifact} misses its gate on this machine: {'; '.join(failures)}")


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _run_classify(pipeline, args: argparse.Namespace) -> tuple[list[str], list[list]]:
    results = pipeline.classify(args.texts, top_k=args.top_k or 1)
    return ["text", "label", "score"], [[_short(t), r["label"], f"{r['score']:.4f}"]
                                        for t, rows in zip(args.texts, results) for r in rows]  # fmt: skip


def _run_entities(pipeline, args: argparse.Namespace) -> tuple[list[str], list[list]]:
    results = pipeline.entities(args.texts, aggregation=args.aggregation)
    return ["text", "entity", "word", "start", "end", "score"], [
        [_short(t, 30), e.get("entity_group", e.get("entity")), e["word"], e["start"], e["end"], f"{e['score']:.4f}"]
        for t, found in zip(args.texts, results) for e in found
    ]  # fmt: skip


def _run_answer(pipeline, args: argparse.Namespace) -> tuple[list[str], list[list]]:
    if not args.question:
        raise ValueError("answer artifacts need --question (and --context or texts)")
    found = pipeline.answer(args.question, args.context or " ".join(args.texts), top_k=args.top_k or 1)
    answers = found if isinstance(found, list) else [found]
    return ["answer", "start", "end", "score"], [[a["answer"], a["start"], a["end"], f"{a['score']:.4f}"] for a in answers]


def _run_fill(pipeline, args: argparse.Namespace) -> tuple[list[str], list[list]]:
    results = pipeline.fill(args.texts, top_k=args.top_k or 5)
    return ["text", "token", "score", "sequence"], [[_short(t, 30), r["token_str"], f"{r['score']:.4f}", r["sequence"]]
                                                    for t, rows in zip(args.texts, results) for r in rows]  # fmt: skip


def _run_embed(pipeline, args: argparse.Namespace) -> tuple[list[str], list[list]]:
    vectors = pipeline.embed(args.texts)
    return ["text", f"embedding (first 4 of {pipeline.dim})"], [
        [_short(t), " ".join(f"{x:+.4f}" for x in v[:4]) + " …"] for t, v in zip(args.texts, vectors)
    ]  # fmt: skip


# Task → how `onnxforge run` calls its pipeline and tabulates the result.
RUNNERS: dict[str, Callable[..., tuple[list[str], list[list]]]] = {
    "classify": _run_classify, "token-classify": _run_entities, "answer": _run_answer, "fill-mask": _run_fill,
    "embed": _run_embed,
}  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    from .runtime import load

    pipeline = load(args.artifact, providers=args.providers)
    runner = RUNNERS.get(pipeline.task)
    if runner is None:
        raise ValueError(f"{args.artifact}: task {pipeline.task!r} has no text runner; supported: {', '.join(RUNNERS)}")
    if pipeline.task != "answer" and not args.texts:
        raise ValueError("give at least one text")
    headers, rows = runner(pipeline, args)
    print(render(headers, rows))


def cmd_embed(args: argparse.Namespace) -> None:
    from .runtime import load

    embedder = load(args.artifact, providers=args.providers, threads=args.threads)
    vectors = embedder.embed(args.texts)
    if args.json:
        for text, vector in zip(args.texts, vectors):
            print(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector]}))
        return
    print(f"{len(vectors)} × {embedder.dim} on {embedder.provider}", file=sys.stderr)
    rows = [[t if len(t) <= 40 else t[:39] + "…", " ".join(f"{x:+.4f}" for x in v[:4]) + " …"]
            for t, v in zip(args.texts, vectors)]  # fmt: skip
    print(render(["text", "embedding"], rows))


def _generator(args: argparse.Namespace):
    from .runtime import load
    from .runtime.generate import Generator

    pipeline = load(args.artifact, providers=args.providers, threads=args.threads)
    if not isinstance(pipeline, Generator):
        raise ValueError(  # noqa: TRY004 - a wrong artifact, not a wrong argument type
            f"{args.artifact}: task {pipeline.task!r} does not generate text; a 'generate' artifact is needed")
    return pipeline


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "repetition_penalty": args.repetition_penalty, "stop": args.stop, "seed": args.seed}  # fmt: skip


def _stream(pieces) -> str:
    text = []
    for piece in pieces:
        print(piece, end="", flush=True)
        text.append(piece)
    print()
    return "".join(text)


def cmd_generate(args: argparse.Namespace) -> None:
    generator = _generator(args)
    _stream(generator.generate(args.prompt, stream=True, **_sampling(args)))


def cmd_translate(args: argparse.Namespace) -> None:
    """Translate (or summarize) each text: streamed when there is one and no beams, else a table."""
    from .runtime import load
    from .runtime.text2text import Text2Text

    pipeline = load(args.artifact, providers=args.providers, threads=args.threads)
    if not isinstance(pipeline, Text2Text):
        raise ValueError(  # noqa: TRY004 - a wrong artifact, not a wrong argument type
            f"{args.artifact}: task {pipeline.task!r} is not text-to-text; a 'translate' or 'summarize' artifact is needed")
    settings = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "temperature": args.temperature,
                "length_penalty": args.length_penalty, "no_repeat_ngram_size": args.no_repeat_ngram_size,
                "top_k": args.top_k, "top_p": args.top_p, "repetition_penalty": args.repetition_penalty,
                "seed": args.seed, "target_language": args.target_language}  # fmt: skip
    if len(args.texts) == 1 and (args.num_beams or pipeline.defaults.get("num_beams", 1)) == 1:
        _stream(pipeline.translate(args.texts[0], stream=True, **settings))
        return
    outputs = pipeline.translate(list(args.texts), **settings)
    print(render(["text", pipeline.manifest.task], [[t, o] for t, o in zip(args.texts, outputs)]))


def cmd_chat(args: argparse.Namespace) -> None:
    generator = _generator(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    generator.chat_prompt([*messages, {"role": "user", "content": ""}])  # no chat template: say so before input
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        if interactive:
            print("model> ", end="", flush=True)
        messages.append({"role": "assistant", "content": _stream(generator.chat(messages, stream=True, **_sampling(args)))})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxforge", description="PyTorch transformers → validated ONNX artifacts.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("build", help="build the artifacts of a recipe and print a summary")
    s.add_argument("recipe", nargs="?", default="artifacts.toml")
    s.add_argument("--root", default="artifacts", type=Path, help="where artifacts go (default: artifacts)")
    s.add_argument("--only", action="append", metavar="NAME/VARIANT", help="build just this variant (repeatable)")
    s.add_argument("--force", action="store_true", help="rebuild even when up to date")
    s.set_defaults(run=cmd_build)

    s = sub.add_parser("export", help="export a model to an fp32 artifact")
    s.add_argument("model", help="packaged model name or local Hugging Face directory")
    s.add_argument("--task", default="embed", choices=HF_TASKS)
    s.add_argument("-o", "--output", required=True, type=Path)
    s.add_argument("--opset", type=int, default=18)
    s.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--graph", choices=["auto", "optimum"], default="auto",
                   help="generate: auto = onnxforge's fused decoder graph where it covers the family")
    _format_option(s)
    s.set_defaults(run=cmd_export)

    s = sub.add_parser("quantize", help="quantize an fp32 artifact, gated against it")
    s.add_argument("input", type=Path)
    s.add_argument("--to", choices=["int8", "int4", "fp16"], default="int8",
                   help="int8 and int4 are weight-only blockwise for generate artifacts")
    s.add_argument("-o", "--output", required=True, type=Path)
    s.add_argument("--gate", action="append", default=[], metavar="FIGURE=MIN", help="e.g. mean_cosine=0.99")
    s.add_argument("--op-types", nargs="+", default=["MatMul"])
    s.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per channel")
    s.add_argument("--activations", choices=["dynamic", "static", "per-token"],
                   help="int8 activation scales: per tensor at run time (default), calibrated (QDQ), or per token at "
                        "run time; naming one makes a generate artifact's int8 quantize activations too")
    s.add_argument("--weight-rounding", choices=["nearest", "gptq"], default="nearest",
                   help="gptq: error-compensating int8 rounding on calibration inputs")
    s.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    s.add_argument("--smooth-alpha", type=float, help="SmoothQuant migration strength in (0, 1)")
    s.add_argument("--max-keep", type=int, default=0, help="keep up to N most sensitive nodes apart to pass --gate")
    s.add_argument("--keep-as", choices=["int8-block", "fp32"], default="int8-block")
    s.add_argument("--search-margin", type=float, default=0.0,
                   help="the search passes a candidate only with each --gate minimum this share closer to 1")
    s.add_argument("--block-size", type=int, default=32, help="int4 / decoder int8: weights per scale")
    s.add_argument("--symmetric", action="store_true", help="int4 / decoder int8: no zero points")
    s.add_argument("--gguf", type=Path, help="int4 / decoder int8: the GGUF the fp32 artifact came from; weights it "
                                             "holds keep its own blocks exactly")
    s.add_argument("--calibration", type=Path, help="calibration/search texts, one per line")
    s.add_argument("--evaluation", type=Path, help="held-out texts for the gate, one per line")
    s.add_argument("--teacher", type=Path, help="for a distilled student: its teacher's fp32 artifact, which the gate "
                                                "measures against instead of the input")
    _format_option(s)
    s.set_defaults(run=cmd_quantize)

    s = sub.add_parser("distill", help="train a student with a subset of a model's layers to reproduce it")
    s.add_argument("teacher", help="packaged model name or local Hugging Face directory")
    s.add_argument("--task", default="embed", help="embed (default), classify or token-classify")
    s.add_argument("-o", "--output", required=True, type=Path, help="the student's Hugging Face directory")
    s.add_argument("--layers", help="teacher layers the student keeps, e.g. 0,2,4 (default: every other one)")
    s.add_argument("--text", action="append", default=[], type=Path, metavar="FILE",
                   help="more training text, one per line (repeatable); the corpus's calibration half is always used")
    s.add_argument("--ffn-keep", type=float, default=1.0, metavar="FRACTION",
                   help="each feed-forward block keeps this fraction of its neurons, chosen and re-fitted to the "
                        "teacher on calibration text before training (default 1: not pruned)")  # fmt: skip
    s.add_argument("--epochs", type=int, default=6, help="training epochs (0: the student as made, untrained)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--learning-rate", type=float, default=1e-4)
    s.add_argument("--temperature", type=float, default=2.0, help="soft labels (classify, token-classify)")
    s.add_argument("--hidden-weight", type=float, default=0.0, help="weight of matching each kept layer's output")
    s.add_argument("--max-length", type=int, default=128, help="tokens per training text")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_distill)

    s = sub.add_parser("inspect", help="show an artifact's manifest as a table")
    s.add_argument("artifact", type=Path)
    s.set_defaults(run=cmd_inspect)

    s = sub.add_parser("families", help="list the model families export takes, with what each reproduces")
    s.set_defaults(run=cmd_families)

    s = sub.add_parser("verify", help="measure a quantized artifact's gate figures again on this machine")
    s.add_argument("artifact", type=Path)
    s.add_argument("--reference", type=Path, help="its fp32 artifact (default: the sibling it was quantized from)")
    s.add_argument("--texts", type=int, default=512, help="held-out texts to measure on (default 512)")
    s.add_argument("--evaluation", type=Path, help="held-out texts, one per line (default: the shipped corpus's)")
    s.set_defaults(run=cmd_verify)

    s = sub.add_parser("embed", help="embed texts with an embed artifact")
    s.add_argument("artifact", type=Path)
    s.add_argument("texts", nargs="+")
    s.add_argument("--providers", default="auto", help="auto, cpu or cuda")
    s.add_argument("--threads", type=int)
    s.add_argument("--json", action="store_true", help="print full vectors as JSON lines")
    s.set_defaults(run=cmd_embed)

    s = sub.add_parser("run", help="run any text artifact (classify, token-classify, answer, fill-mask, embed)")
    s.add_argument("artifact", type=Path)
    s.add_argument("texts", nargs="*", help="texts (for answer: the context, or use --context)")
    s.add_argument("--question", help="answer: the question")
    s.add_argument("--context", help="answer: the context (else the texts joined)")
    s.add_argument("--top-k", type=int, default=None, help="labels / answers / tokens to show")
    s.add_argument("--aggregation", default="simple", help="token-classify: none, simple, first, max, average")
    s.add_argument("--providers", default="auto", help="auto, cpu or cuda")
    s.set_defaults(run=cmd_run)

    s = sub.add_parser("generate", help="continue a prompt with a generate artifact, streamed to the terminal")
    s.add_argument("artifact", type=Path)
    s.add_argument("prompt")
    _generation_options(s, max_new_tokens=128)
    s.set_defaults(run=cmd_generate)

    s = sub.add_parser("translate", help="translate (or summarize) texts with a translate / summarize artifact")
    s.add_argument("artifact", type=Path)
    s.add_argument("texts", nargs="+")
    s.add_argument("--max-new-tokens", type=int, help="default: the model's generation config, else 128")
    s.add_argument("--num-beams", type=int, help="default: the model's generation config (one text, 1 beam: streamed)")
    s.add_argument("--length-penalty", type=float)
    s.add_argument("--no-repeat-ngram-size", type=int)
    s.add_argument("--target-language", help="a language token of the model (mBART-50's de_DE), forced first")
    _sampling_options(s)  # sampling and its repetition penalty: num_beams 1 only
    s.set_defaults(run=cmd_translate)

    s = sub.add_parser("chat", help="talk with a generate artifact through its chat template (Ctrl-D ends)")
    s.add_argument("artifact", type=Path)
    s.add_argument("--system", help="a system message to start with")
    _generation_options(s, max_new_tokens=256)
    s.set_defaults(run=cmd_chat)

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over artifacts (extra 'serve')")
    s.add_argument("artifacts", nargs="+", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: loopback only")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=32, help="embedding texts merged into one batch")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    s.add_argument("--max-queue", type=int, default=1024, help="texts waiting; beyond it requests get 503")
    s.add_argument("--max-generations", type=int, default=8,
                   help="generations decoding together per model (slots of its KV cache pool)")
    s.add_argument("--max-waiting-generations", type=int, default=16, help="generations waiting; beyond: 503")
    s.add_argument("--prefill-tokens", type=int, default=256, help="prompt tokens fed per decode step")
    s.add_argument("--slot-tokens", type=int, help="tokens per generation slot (prompt + completion); default: context")
    s.add_argument("--threads", type=int, help="onnxruntime threads per artifact")
    s.set_defaults(run=cmd_serve)

    s = sub.add_parser("triton-repo", help="write a Triton Inference Server model folder (onnxruntime backend)")
    s.add_argument("artifact", type=Path)
    s.add_argument("-o", "--output", type=Path, required=True, help="the model repository (created if missing)")
    s.add_argument("--max-batch", type=int, default=32)
    s.add_argument("--max-delay-us", type=int, default=5000, help="dynamic batching's max queue delay")
    s.add_argument("--instances", type=int, default=1, help="model instances (CPU)")
    s.set_defaults(run=cmd_triton_repo)
    return p


def cmd_triton_repo(args: argparse.Namespace) -> None:
    from .triton import write_repository

    folder = write_repository(args.artifact, args.output, args.max_batch, args.max_delay_us, args.instances)
    print(f"wrote {folder} (config.pbtxt, 1/{', 1/'.join(sorted(p.name for p in (folder / '1').iterdir()))})")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .server import Limits, create_app

    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_generations=args.max_generations, max_waiting_generations=args.max_waiting_generations,
                    prefill_tokens=args.prefill_tokens, slot_tokens=args.slot_tokens, threads=args.threads)  # fmt: skip
    app = create_app(args.artifacts, limits)
    for name, served in app.state.server.models.items():
        if (engine := served.engine) and engine.pool:  # traced graphs: each generation allocates its own cache
            print(f"{name}: {engine.slots} generation slots × {engine.capacity} tokens; KV cache at most "
                  f"{engine.kv_bytes / 2**20:.0f} MiB ({engine.decoder.kv_bytes_per_token} bytes a token)")
    # SIGTERM / Ctrl-C: uvicorn stops accepting, lets in-flight requests finish (up to 30 s), then shuts down.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)


def _format_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--format", choices=FORMATS, default="onnx",
                   help="ort: also write model.ort and required_operators.config (mobile / minimal onnxruntime builds); "
                        "transformers.js: the graph at onnx/model{_quantized,_fp16,_q4}.onnx, as transformers.js reads it")


def _generation_options(s: argparse.ArgumentParser, max_new_tokens: int) -> None:
    s.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    _sampling_options(s)


def _sampling_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0 samples")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--providers", default="auto", help="auto, cpu or cuda")
    s.add_argument("--threads", type=int)


EXPECTED: tuple[type[BaseException], ...] = (ArtifactError, ValueError, TypeError, FileNotFoundError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except ImportError as exc:  # a build-only library is missing (or broken) in this environment
        print(f"onnxforge: error: cannot import {exc.name or exc}; {BUILD_HINT}", file=sys.stderr)
        return 2
    except EXPECTED as exc:
        print(f"onnxforge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
