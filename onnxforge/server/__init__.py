"""An OpenAI-compatible HTTP server over onnxforge artifacts (extra ``serve``: starlette, uvicorn).

``onnxforge serve ARTIFACT [ARTIFACT…]`` or ``create_app([...])`` for any ASGI server.
"""

from .app import Limits, create_app

__all__ = ["Limits", "create_app"]
