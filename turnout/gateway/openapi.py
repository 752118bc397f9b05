"""The OpenAPI 3.1 document of the gateway, served at ``GET /openapi.json``.

Request schemas say what the gateway itself checks (the workers and backends
may refuse more); response schemas are what the gateway answers, so a
schemathesis run against a live gateway checks one against the other.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_OBJ = {"type": "object"}
_MODEL = {"type": "string", "minLength": 1, "maxLength": 256}
_NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _errors(kind: str, *codes: int) -> dict[str, Any]:
    text = {
        400: "The request is invalid (the message names the field).",
        401: "Missing or unknown API key.",
        403: "The request id belongs to another client.",
        404: "Unknown model or request id.",
        413: "The request is too large.",
        429: "The client is rate limited; see Retry-After.",
        502: "Every backend attempt failed; see Retry-After.",
        503: "No backend available or Kafka unreachable; see Retry-After.",
        504: "No reply in time; the body names the request id and its status URL.",
    }
    return {str(c): _json(_ref(kind), text[c]) for c in codes}


_SYNC_ERRORS = (400, 401, 404, 413, 429, 502, 503, 504)
_TIMEOUT_PARAMS = [
    {
        "name": "timeout",
        "in": "query",
        "required": False,
        "description": "Seconds to wait for the reply before 504 (default 60).",
        "schema": {"type": "number", "minimum": 1, "maximum": 3600},
    },
    {
        "name": "X-Turnout-Timeout",
        "in": "header",
        "required": False,
        "description": "Same as the timeout query parameter.",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,2}$"},
    },
]


def _op(
    op_id: str,
    summary: str,
    tag: str,
    request: dict[str, Any] | None,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    public: bool = False,
    examples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "responses": responses,
    }
    if request is not None:
        media: dict[str, Any] = {"schema": request}
        if examples:
            media["examples"] = {f"example{i}": {"value": v} for i, v in enumerate(examples)}
        op["requestBody"] = {"required": True, "content": {"application/json": media}}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


_HI = [{"role": "user", "content": "Hello"}]
_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "createChatCompletion": [
        {"model": "default", "messages": _HI},
        {"model": "default", "messages": _HI, "stream": True,
         "stream_options": {"include_usage": True}},
    ],
    "createCompletion": [
        {"model": "default", "prompt": "Once upon a time"},
        {"model": "default", "prompt": "Once upon a time", "stream": True},
    ],
    "createEmbeddings": [{"model": "default", "input": ["a", "b"]}],
    "ollamaChat": [
        {"model": "default", "messages": _HI},
        {"model": "default", "messages": _HI, "stream": False, "options": {"num_predict": 5}},
    ],
    "ollamaGenerate": [
        {"model": "default", "prompt": "Why is the sky blue?"},
        {"model": "default", "prompt": "Why?", "system": "Be brief.", "stream": False},
    ],
    "ollamaEmbed": [{"model": "default", "input": ["a", "b"]}],
    "ollamaEmbeddings": [{"model": "default", "prompt": "a"}],
    "submitRequest": [
        {"kind": "chat", "model": "default", "body": {"messages": _HI}, "priority": 7},
        {"kind": "embeddings", "model": "default", "body": {"input": "a"}},
    ],
}  # fmt: skip


# One server-sent event (OpenAPI 3.1: the schema of an event stream describes each event).
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "contentMediaType": "application/json"}},
}


def _stream_ok(schema: dict[str, Any], media: str, what: str) -> dict[str, Any]:
    streamed = _SSE_EVENT if media == "text/event-stream" else _STR
    return {
        "description": f"The answer; with stream true, {what}",
        "content": {"application/json": {"schema": schema}, media: {"schema": streamed}},
    }


def _schemas() -> dict[str, Any]:
    message = {"type": "object", "required": ["role"], "properties": {"role": _STR}}
    ollama_message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": _STR,
            "content": _STR,
            "images": {"type": "array", "items": _STR},
        },
    }
    ollama_common = {
        "model": _MODEL,
        "stream": {"type": "boolean"},
        "options": _OBJ,
        "format": {"anyOf": [{"type": "string", "enum": ["", "json"]}, _OBJ]},
        "keep_alive": {"type": ["string", "number"]},
    }
    text_or_list = {"anyOf": [_STR, {"type": "array"}]}
    return {
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": _STR,
                        "type": _STR,
                        "code": _NULLABLE_STR,
                        "param": _NULLABLE_STR,
                        "id": _STR,
                        "status_url": _STR,
                    },
                }
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": _STR,
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": _STR, "message": _STR},
                },
            },
        },
        "MessagesRequest": {
            "type": "object",
            "required": ["model", "max_tokens", "messages"],
            "properties": {
                "model": _STR,
                "max_tokens": {"type": "integer", "minimum": 1},
                "messages": {"type": "array", "minItems": 1, "items": message},
                "system": {},
                "stream": {"type": "boolean"},
                "tools": {"type": "array"},
                "tool_choice": {"type": "object"},
            },
        },
        "Message": {
            "type": "object",
            "required": ["id", "type", "role", "content", "stop_reason", "usage"],
            "properties": {
                "id": _STR,
                "type": _STR,
                "role": _STR,
                "content": {"type": "array"},
                "stop_reason": _STR,
                "usage": {"type": "object"},
            },
        },
        "ResponsesRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": _STR,
                "input": {"oneOf": [_STR, {"type": "array", "minItems": 1}]},
                "instructions": _STR,
                "stream": {"type": "boolean"},
                "background": {"type": "boolean"},
                "tools": {"type": "array"},
            },
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "status", "output"],
            "properties": {
                "id": _STR,
                "object": _STR,
                "status": _STR,
                "output": {"type": "array"},
                "usage": {},
            },
        },
        "OllamaError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _STR, "id": _STR, "status_url": _STR},
        },
        "ChatRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": _MODEL,
                "messages": {"type": "array", "minItems": 1, "items": message},
                "stream": {"type": "boolean"},
                "stream_options": _OBJ,
                "max_tokens": _INT,
                "temperature": {"type": "number"},
            },
        },
        "CompletionRequest": {
            "type": "object",
            "required": ["model", "prompt"],
            "properties": {"model": _MODEL, "prompt": text_or_list, "stream": {"type": "boolean"}},
        },
        "EmbeddingsRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {"model": _MODEL, "input": text_or_list},
        },
        "Completion": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": _STR,
                "object": _STR,
                "created": _INT,
                "model": _STR,
                "choices": {"type": "array", "items": _OBJ},
                "usage": _OBJ,
            },
        },
        "EmbeddingList": {
            "type": "object",
            "required": ["data"],
            "properties": {"object": _STR, "data": {"type": "array"}, "model": _STR},
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "object"],
                        "properties": {"id": _STR, "object": _STR, "owned_by": _STR},
                    },
                },
            },
        },
        "OllamaChatRequest": {
            "type": "object",
            "required": ["model"],
            "properties": {
                **ollama_common,
                "messages": {"type": "array", "items": ollama_message},
            },
        },
        "OllamaGenerateRequest": {
            "type": "object",
            "required": ["model"],
            "properties": {
                **ollama_common,
                "prompt": _STR,
                "system": _STR,
                "suffix": _STR,
                "images": {"type": "array", "items": _STR},
            },
        },
        "OllamaEmbedRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": _MODEL,
                "input": {"type": ["string", "array"], "items": _STR},
                "options": _OBJ,
            },
        },
        "OllamaEmbeddingsRequest": {
            "type": "object",
            "required": ["model", "prompt"],
            "properties": {"model": _MODEL, "prompt": _STR, "options": _OBJ},
        },
        "OllamaAnswer": {
            "type": "object",
            "required": ["model", "done"],
            "properties": {
                "model": _STR,
                "created_at": _STR,
                "message": {"type": "object", "properties": {"role": _STR, "content": _STR}},
                "response": _STR,
                "done": {"type": "boolean"},
                "done_reason": _STR,
                "prompt_eval_count": _INT,
                "eval_count": _INT,
            },
        },
        "OllamaEmbed": {
            "type": "object",
            "required": ["model", "embeddings"],
            "properties": {"model": _STR, "embeddings": {"type": "array"}},
        },
        "OllamaEmbedding": {
            "type": "object",
            "required": ["embedding"],
            "properties": {"embedding": {"type": "array"}},
        },
        "OllamaTags": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": _OBJ}},
        },
        "AsyncRequest": {
            "type": "object",
            "required": ["kind", "model", "body"],
            "properties": {
                "kind": {"enum": ["chat", "completion", "embeddings"]},
                "model": _MODEL,
                "body": {
                    "type": "object",
                    "description": "The OpenAI request body of the kind (model may be omitted).",
                },
                "webhook_url": {
                    "type": "string",
                    "description": "Called on completion; must match TURNOUT_WEBHOOK_ALLOW.",
                },
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86400000},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                "metadata": {"type": "object", "additionalProperties": _STR},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "status", "status_url"],
            "properties": {"id": _STR, "status": {"const": "queued"}, "status_url": _STR},
        },
        "RequestStatus": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": _STR,
                "status": {"enum": ["queued", "running", "done", "failed"]},
                "kind": _STR,
                "model": _STR,
                "created_ms": _INT,
                "updated_ms": _INT,
                "result": {"description": "The OpenAI response body, when done."},
                "error": {
                    "type": ["object", "null"],
                    "description": "{code, message, retryable, retry_after_ms}, when failed.",
                },
                "backend": _NULLABLE_STR,
                "route": _NULLABLE_STR,
                "attempts": _INT,
                "webhook": {"enum": ["pending", "delivered", "failed"]},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": _STR}},
    }


# (path, method, operationId, summary, tag, request schema, responses, options)
def _operations() -> list[tuple[str, str, str, str, str, Any, dict[str, Any], dict[str, Any]]]:
    sse = "SSE events `data: {chunk}` ending with `data: [DONE]` (or an error event)."
    ndjson = "NDJSON objects ending with `done: true` (or an error object)."
    oa_err = _errors("OpenAIError", *_SYNC_ERRORS)
    ol_err = _errors("OllamaError", *_SYNC_ERRORS)
    sync = {"params": _TIMEOUT_PARAMS}
    public = {"public": True}
    accepted = _json(_ref("Accepted"), "Accepted; poll status_url.")
    accepted["links"] = {
        "GetStatus": {"operationId": "getRequestStatus", "parameters": {"id": "$response.body#/id"}}
    }
    id_param = {"params": [{"name": "id", "in": "path", "required": True, "schema": _STR}]}
    version = {"type": "object", "properties": {"version": _STR}}
    return [
        ("/v1/chat/completions", "post", "createChatCompletion", "Chat completion (OpenAI)",
         "openai", _ref("ChatRequest"),
         {"200": _stream_ok(_ref("Completion"), "text/event-stream", sse), **oa_err}, sync),
        ("/v1/completions", "post", "createCompletion", "Text completion (OpenAI)", "openai",
         _ref("CompletionRequest"),
         {"200": _stream_ok(_ref("Completion"), "text/event-stream", sse), **oa_err}, sync),
        ("/v1/embeddings", "post", "createEmbeddings", "Embeddings (OpenAI)", "openai",
         _ref("EmbeddingsRequest"), {"200": _json(_ref("EmbeddingList")), **oa_err}, sync),
        ("/v1/models", "get", "listModels", "Route aliases and models from the config", "openai",
         None, {"200": _json(_ref("ModelList")), **_errors("OpenAIError", 401)}, {}),
        ("/v1/messages", "post", "createMessage", "Messages (Anthropic; x-api-key or Bearer)",
         "anthropic", _ref("MessagesRequest"),
         {"200": _stream_ok(_ref("Message"), "text/event-stream",
                            "Anthropic's events, message_start ... message_stop."),
          **_errors("AnthropicError", *_SYNC_ERRORS)}, sync),
        ("/v1/messages/count_tokens", "post", "countMessageTokens",
         "Estimated input tokens of a Messages request (Anthropic)", "anthropic",
         _ref("MessagesRequest"),
         {"200": _json({"type": "object", "required": ["input_tokens"],
                        "properties": {"input_tokens": {"type": "integer"}}}),
          **_errors("AnthropicError", 400, 401)}, {}),
        ("/v1/responses", "post", "createResponse", "Responses (OpenAI); background: true queues",
         "openai", _ref("ResponsesRequest"),
         {"200": _stream_ok(_ref("Response"), "text/event-stream",
                            "typed events, response.created ... response.completed."),
          **oa_err}, sync),
        ("/v1/responses/{id}", "get", "getResponse", "A response by id (the status store)",
         "openai", None,
         {"200": _json(_ref("Response")), **_errors("OpenAIError", 401, 403, 404)}, id_param),
        ("/api/chat", "post", "ollamaChat", "Chat (Ollama)", "ollama", _ref("OllamaChatRequest"),
         {"200": _stream_ok(_ref("OllamaAnswer"), "application/x-ndjson", ndjson), **ol_err},
         sync),
        ("/api/generate", "post", "ollamaGenerate", "Generate (Ollama)", "ollama",
         _ref("OllamaGenerateRequest"),
         {"200": _stream_ok(_ref("OllamaAnswer"), "application/x-ndjson", ndjson), **ol_err},
         sync),
        ("/api/embed", "post", "ollamaEmbed", "Embeddings (Ollama)", "ollama",
         _ref("OllamaEmbedRequest"), {"200": _json(_ref("OllamaEmbed")), **ol_err}, sync),
        ("/api/embeddings", "post", "ollamaEmbeddings", "One embedding (older Ollama endpoint)",
         "ollama", _ref("OllamaEmbeddingsRequest"),
         {"200": _json(_ref("OllamaEmbedding")), **ol_err}, sync),
        ("/api/tags", "get", "ollamaTags", "Models (Ollama)", "ollama", None,
         {"200": _json(_ref("OllamaTags")), **_errors("OllamaError", 401)}, {}),
        ("/api/version", "get", "ollamaVersion", "Version (Ollama)", "ollama", None,
         {"200": _json(version)}, public),
        ("/v1/requests", "post", "submitRequest", "Submit an asynchronous request", "async",
         _ref("AsyncRequest"),
         {"202": accepted, **_errors("OpenAIError", 400, 401, 413, 503)}, {}),
        ("/v1/requests/{id}", "get", "getRequestStatus", "Status and result of a request",
         "async", None,
         {"200": _json(_ref("RequestStatus"), "The status; Retry-After while not done."),
          **_errors("OpenAIError", 401, 403, 404)}, id_param),
        ("/healthz", "get", "healthz", "Liveness", "health", None,
         {"200": _json(_ref("Health"))}, public),
        ("/readyz", "get", "readyz", "Readiness: Kafka reachable", "health", None,
         {"200": _json(_ref("Health")), "503": _json(_ref("Health"), "Not ready.")}, public),
        ("/metrics", "get", "metrics", "Prometheus metrics of this gateway", "health", None,
         {"200": {"description": "Prometheus text exposition",
                  "content": {"text/plain": {"schema": _STR}}}}, public),
        ("/openapi.json", "get", "openapi", "This document", "health", None,
         {"200": _json(_OBJ)}, public),
    ]  # fmt: skip


@cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method, op_id, summary, tag, request, responses, options in _operations():
        paths.setdefault(path, {})[method] = _op(
            op_id, summary, tag, request, responses, examples=_EXAMPLES.get(op_id), **options
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "turnout gateway",
            "version": "0.1.0",
            "description": "OpenAI- and Ollama-compatible endpoints in front of turnout's Kafka "
            "request path, and asynchronous requests with polling and webhooks.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
