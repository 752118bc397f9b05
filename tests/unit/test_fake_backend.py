"""ScriptedBackendClient: a fake BackendClient that follows its script and records its calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turnout.backends import BackendClient
from turnout.config import Backend
from turnout.errors import BackendStatusError, BackendTimeout, BackendUnavailable
from turnout.testing.fake import Call, ScriptedBackendClient, vector

B1 = Backend(id="b1", protocol="openai", base_url="http://b1", models=["m"])
B2 = Backend(id="b2", protocol="ollama", base_url="http://b2", models=["m"])
CHAT = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]}


async def chat(
    fake: BackendClient, backend: Backend = B1, timeout_s: float = 5.0
) -> dict[str, Any]:
    return await fake.call(backend, kind="chat", model="m", body=CHAT, timeout_s=timeout_s)


def down(backend: str = "b1") -> BackendUnavailable:
    return BackendUnavailable("down", backend=backend)


async def test_fails_as_scripted_then_answers() -> None:
    """Scripted failures are raised in order, then the script's "ok" answers."""
    fake = ScriptedBackendClient({"b1": [down(), down(), "ok"]})
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await chat(fake)
    assert (await chat(fake))["choices"][0]["message"]["content"] == "echo: hello"


async def test_answers_ok_once_the_script_runs_out() -> None:
    """After its last step, and for a backend without a script, every call answers ok."""
    fake = ScriptedBackendClient({"b1": [down()]})
    with pytest.raises(BackendUnavailable):
        await chat(fake)
    assert (await chat(fake))["object"] == "chat.completion"
    assert (await chat(fake, B2))["object"] == "chat.completion"


async def test_scripts_are_per_backend() -> None:
    """Each backend plays its own script, whatever the order of calls."""
    fake = ScriptedBackendClient({"b1": [down("b1")], "b2": ["ok", down("b2")]})
    await chat(fake, B2)
    with pytest.raises(BackendUnavailable) as caught:
        await chat(fake, B1)
    assert caught.value.backend == "b1"
    with pytest.raises(BackendUnavailable) as caught:
        await chat(fake, B2)
    assert caught.value.backend == "b2"


async def test_a_dict_step_is_returned_as_is() -> None:
    """A dict in the script is the response body."""
    fake = ScriptedBackendClient({"b1": [{"custom": True}]})
    assert await chat(fake) == {"custom": True}


async def test_a_callable_script_decides_each_step() -> None:
    """A callable script gets the Call and returns the step to play."""

    def script(call: Call) -> Any:
        return (
            BackendStatusError("busy", backend=call.backend_id, status=429)
            if call.model == "m"
            else "ok"
        )

    fake = ScriptedBackendClient({"b1": script})
    with pytest.raises(BackendStatusError):
        await chat(fake)


async def test_records_every_call() -> None:
    """calls lists (backend_id, kind, model, body) for each call, failed ones included."""
    fake = ScriptedBackendClient({"b1": [down()]})
    with pytest.raises(BackendUnavailable):
        await chat(fake)
    await fake.call(B2, kind="embeddings", model="e", body={"input": "x"}, timeout_s=1)
    assert fake.calls == [("b1", "chat", "m", CHAT), ("b2", "embeddings", "e", {"input": "x"})]
    assert fake.calls_to("b2") == [Call("b2", "embeddings", "e", {"input": "x"})]


async def test_repr_shows_call_counts() -> None:
    """The repr counts calls per backend."""
    fake = ScriptedBackendClient()
    await chat(fake)
    await chat(fake)
    await chat(fake, B2)
    await fake.close()
    assert repr(fake) == "<ScriptedBackendClient calls={'b1': 2, 'b2': 1} closed=True>"


async def test_delay_sleeps_before_answering() -> None:
    """A per-backend delay holds the call for that long."""
    fake = ScriptedBackendClient(delay_s={"b1": 0.05})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await chat(fake)
    assert loop.time() - started >= 0.05
    started = loop.time()
    await chat(fake, B2)
    assert loop.time() - started < 0.05


async def test_delay_past_the_timeout_raises_backend_timeout() -> None:
    """A delay longer than timeout_s raises BackendTimeout after timeout_s."""
    fake = ScriptedBackendClient(delay_s=10.0)
    with pytest.raises(BackendTimeout):
        await asyncio.wait_for(chat(fake, timeout_s=0.01), 1.0)


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("completion", {"prompt": "once upon"}, "echo: once upon"),
        ("completion", {"prompt": ["first", "second"]}, "echo: first"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "part"}]}]},
            "echo: part",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2},
            "echo: one",
        ),
    ],
)
async def test_ok_answers_echo_the_input(kind: Any, body: dict[str, Any], expected: str) -> None:
    """An ok answer echoes the last user message or the prompt, cut to max_tokens words."""
    out = await ScriptedBackendClient().call(B1, kind=kind, model="m", body=body, timeout_s=1)
    choice = out["choices"][0]
    assert (choice["message"]["content"] if kind == "chat" else choice["text"]) == expected


async def test_ok_embeddings_are_deterministic_vectors() -> None:
    """Each input gets the 8-float vector derived from its text."""
    body = {"input": ["a", "b", "a"]}
    out = await ScriptedBackendClient().call(
        B1, kind="embeddings", model="e", body=body, timeout_s=1
    )
    vectors = [d["embedding"] for d in out["data"]]
    assert vectors == [vector("a"), vector("b"), vector("a")]
    assert len(vectors[0]) == 8
    assert vectors[0] != vectors[1]
