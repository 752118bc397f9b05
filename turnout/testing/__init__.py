"""Test doubles shipped with turnout, as httpcore ships its mocks.

``mock_backend`` is an OpenAI/Ollama/Anthropic-speaking HTTP server
(``turnout mock-backend``); ``fake`` is a scripted ``BackendClient`` for unit tests.
"""
