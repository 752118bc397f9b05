"""Prompt caching hints pass through untouched to the protocol that understands them, are
dropped where the target would reject them, and cached tokens are reported back."""

from turnout.backends import anthropic, ollama, openai
from turnout.gateway import anthropic_api as ant
from turnout.gateway import responses_api as rsp

EPHEMERAL = {"type": "ephemeral"}
MESSAGES_BODY = {
    "model": "m",
    "max_tokens": 8,
    "system": [{"type": "text", "text": "long rules", "cache_control": EPHEMERAL}],
    "messages": [{"role": "user", "content": [
        {"type": "text", "text": "big document", "cache_control": EPHEMERAL},
        {"type": "text", "text": "question"}]}],
    "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}],
}  # fmt: skip


def test_cache_control_reaches_an_anthropic_backend_untouched():
    """System, message and tool breakpoints arrive where the client put them."""
    body = ant.parse(MESSAGES_BODY).body
    json = anthropic.build("chat", "claude", body).json
    assert json["system"] == [{"type": "text", "text": "long rules", "cache_control": EPHEMERAL}]
    assert json["messages"][0]["content"] == [
        {"type": "text", "text": "big document", "cache_control": EPHEMERAL},
        {"type": "text", "text": "question"},
    ]
    assert json["tools"][0]["cache_control"] == EPHEMERAL


def test_a_system_prompt_without_breakpoints_stays_a_string():
    """No cache_control: the system prompt is the plain string it was."""
    json = anthropic.build("chat", "m", {"messages": [{"role": "system", "content": "hi"}]}).json
    assert json["system"] == "hi"


def test_openai_backends_get_no_cache_control_but_keep_prompt_cache_key():
    """OpenAI caches prefixes itself: breakpoints are dropped, prompt_cache_key is kept."""
    body = {**ant.parse(MESSAGES_BODY).body, "prompt_cache_key": "tenant-7"}
    json = openai.build("chat", "gpt", body).json
    assert "cache_control" not in str(json)
    assert json["prompt_cache_key"] == "tenant-7"
    assert json["messages"][1]["content"][0] == {"type": "text", "text": "big document"}


def test_the_responses_api_passes_prompt_cache_key():
    """prompt_cache_key from /v1/responses reaches the workers' body."""
    call, _ = rsp.parse({"model": "m", "input": "hi", "prompt_cache_key": "k"})
    assert call.body["prompt_cache_key"] == "k"


def test_ollama_backends_get_neither_hint():
    """Ollama has no cache hints: its call carries none."""
    body = {**ant.parse(MESSAGES_BODY).body, "prompt_cache_key": "k"}
    assert "cache" not in str(ollama.build("chat", "m", body).json)


def test_anthropic_cache_counts_become_openai_cached_tokens():
    """Cache reads and writes count as prompt tokens; reads are reported as cached."""
    got = anthropic.usage(
        {"input_tokens": 20, "cache_read_input_tokens": 80, "cache_creation_input_tokens": 5,
         "output_tokens": 3}
    )  # fmt: skip
    assert got == {
        "prompt_tokens": 105,
        "completion_tokens": 3,
        "total_tokens": 108,
        "prompt_tokens_details": {"cached_tokens": 80},
    }
    assert ant.usage(got)["cache_read_input_tokens"] == 80
    assert rsp.usage(got)["input_tokens_details"] == {"cached_tokens": 80}


def test_a_streamed_anthropic_answer_reports_cached_tokens():
    """message_start's cache counts reach the final usage chunk."""
    t = anthropic.StreamTranslator("chat", "b")
    start = {"type": "message_start", "message": {"id": "x", "usage": {
        "input_tokens": 2, "cache_read_input_tokens": 40, "output_tokens": 0}}}  # fmt: skip
    t.feed("message_start", start)
    (last,) = t.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason":
                     "end_turn"}, "usage": {"output_tokens": 4}})  # fmt: skip
    assert last["usage"]["prompt_tokens"] == 42
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 40}
