"""``/v1/chat/completions``: a toy language model, billed per call and per token.

The reply is streamed (server-sent events) when the request asks for ``"stream": true``.
Tokens are counted with :func:`fluxrate_web.record`, also while the stream is being sent.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, request, stream_with_context
from flask.typing import ResponseReturnValue

from acme_api.auth import require_token
from acme_api.extensions import fluxrate
from fluxrate_web.flask import record

bp = Blueprint("chat", __name__, url_prefix="/v1/chat")
bp.before_request(require_token)
fluxrate.meter_blueprint(bp, "api_calls")


def complete(prompt: str) -> list[str]:
    """The "model": echoes the prompt back, one word per token."""
    words = prompt.split() or ["..."]
    return ["You", "said:", *words]


@bp.post("/completions")
def completions() -> ResponseReturnValue:
    body = request.get_json(silent=True) or {}
    prompt = str(body.get("prompt", ""))
    tokens = complete(prompt)
    if not body.get("stream"):
        record("tokens", len(tokens))
        return {"text": " ".join(tokens), "usage": {"tokens": len(tokens)}}

    def events() -> Iterator[str]:
        sent = 0
        for token in tokens:
            yield f"data: {token}\n\n"
            sent += 1
        yield "data: [DONE]\n\n"
        # Bill only the tokens actually produced; a client that disconnects early pays less.
        record("tokens", sent)

    # stream_with_context: the generator runs inside the request context (request, g)
    return Response(stream_with_context(events()), mimetype="text/event-stream")
