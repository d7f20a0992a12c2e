"""Serve the semantic-search page on loopback: the page, the npm packages, an onnxforge embed artifact and sentences.

    cd examples/web && npm install && python3 serve.py ../../artifacts/minilm-l6/int8
    → open http://127.0.0.1:8000/

Standard library only. Every response carries the cross-origin isolation headers that multi-threaded WASM needs.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path

HERE = Path(__file__).resolve().parent
SENTENCES = HERE.parents[1] / "onnxforge" / "data" / "sentences.txt"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from four roots: / (this folder), /modules/, /model/ and /sentences.txt."""

    def __init__(self, *args, roots: dict[str, Path], **kwargs) -> None:
        self.roots = roots
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in self.roots.items():
            if clean == prefix:
                return str(root)
            if prefix.endswith("/") and clean.startswith(prefix):
                self.directory = str(root)  # one handler per request: this request's root
                return super().translate_path("/" + path[len(prefix) :])
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args: object) -> None:  # quiet: a test reads this process's output
        pass


def server(artifact: Path, modules: Path, sentences: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A loopback server (``port`` 0: any free one) for the page over ``artifact``."""
    if not (artifact / "manifest.json").is_file():
        raise SystemExit(f"{artifact}: not an artifact directory (no manifest.json)")
    if not (modules / "@huggingface" / "transformers").is_dir():
        raise SystemExit(f"{modules}: no @huggingface/transformers here; run npm install in {HERE}")
    roots = {"/modules/": modules, "/model/": artifact, "/sentences.txt": sentences}
    handler = functools.partial(Handler, roots=roots)
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an onnxforge embed artifact in transformers.js layout")
    parser.add_argument("--modules", type=Path, default=HERE / "node_modules", help="node_modules with transformers.js")
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="the text lines to search (# lines skipped)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    httpd = server(args.artifact.resolve(), args.modules.resolve(), args.sentences.resolve(), args.port)
    print(f"http://127.0.0.1:{httpd.server_address[1]}/", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
