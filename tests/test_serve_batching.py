"""Requests that arrive together are answered by fewer generation calls, and each answer is the one it gets alone."""

from __future__ import annotations

import threading

import openai

from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app
from mmllm_sdk.testing.serving import running_server

PROMPTS = [f"Question {n}: what comes after {n}?" for n in range(8)]


def ask(url, prompt, answers, index, **options):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="mmllm", messages=[{"role": "user", "content": prompt}], max_tokens=5, **options
    )
    answers[index] = reply.choices[0].message.content


def ask_together(url, **options):
    answers = [None] * len(PROMPTS)
    threads = [threading.Thread(target=ask, args=(url, p, answers, i), kwargs=options) for i, p in enumerate(PROMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_eight_simultaneous_requests_take_fewer_calls_and_get_their_unbatched_answers(image_model):
    alone = [image_model.generate_batch([[{"role": "user", "content": p}]], max_new_tokens=5)[0].text for p in PROMPTS]
    app = build_app(image_model, ServerSettings(max_batch_size=8, batch_window_ms=300))
    with running_server(app) as url:
        answers = ask_together(url, temperature=0)
    assert answers == alone
    assert app.state.batcher.calls < len(PROMPTS)


def test_requests_with_different_options_are_answered_in_separate_batches(image_model):
    app = build_app(image_model, ServerSettings(max_batch_size=8, batch_window_ms=300))
    with running_server(app) as url:
        first = [None]
        second = [None]
        threads = [
            threading.Thread(target=ask, args=(url, PROMPTS[0], first, 0), kwargs={"temperature": 0}),
            threading.Thread(target=ask, args=(url, PROMPTS[1], second, 0), kwargs={"temperature": 0.7, "seed": 3}),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert app.state.batcher.calls == 2 and first[0] is not None and second[0] is not None


def test_a_seeded_sample_is_the_same_each_time(image_model):
    with running_server(build_app(image_model)) as url:
        answers = [None, None]
        for index in range(2):
            ask(url, PROMPTS[0], answers, index, temperature=1.0, seed=11)
    assert answers[0] == answers[1]
