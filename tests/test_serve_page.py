"""The chat page of `mmllm serve` in a real browser: headless Chromium loads it from a running server with a tiny
model, attaches a PNG, sends a question and shows the streamed answer; with an API key set it asks for the key."""

from __future__ import annotations

import base64

import pytest
from browser import BrowserMissing, chromium, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from mmllm_sdk.testing.serving import running_server

QUESTION = "What is in this picture?"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def browser():
    try:
        with chromium() as driver:
            yield driver
    except BrowserMissing as error:
        pytest.fail(str(error))


def serve(model, **settings):
    from mmllm_sdk.default_plugins.serving.app import ServerSettings, build_app

    return running_server(build_app(model, ServerSettings(model_id="tiny", **settings)))


def page_state(driver):
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def last_answer(driver):
    """The last assistant message once its stream has ended (data-state done or error), else None."""
    answers = driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant")
    if answers and answers[-1].get_attribute("data-state") in ("done", "error"):
        return answers[-1]
    return None


def set_field(driver, element_id, value):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def ask(driver, question):
    """Greedy, short answers (so they can be compared), then the question sent with Enter."""
    set_field(driver, "temperature", 0)
    set_field(driver, "max-tokens", NEW_TOKENS)
    driver.find_element(By.ID, "prompt").send_keys(question, Keys.ENTER)


def test_page_streams_the_answer_to_a_question_about_an_attached_png(browser, image_model, image_file, tmp_path):
    with serve(image_model) as url:
        browser.get(f"{url}/")
        wait_for(browser, lambda d: page_state(d) == "ready", "the model list read")
        assert browser.find_element(By.ID, "model-name").text == "tiny"
        assert "image" in browser.find_element(By.ID, "modalities").text

        browser.find_element(By.ID, "file-image").send_keys(str(image_file))
        chips = browser.find_elements(By.CSS_SELECTOR, "#attachments .chip")
        assert [chip.get_attribute("data-modality") for chip in chips] == ["image"]
        ask(browser, QUESTION)
        answer = wait_for(browser, last_answer, "the streamed answer finished")
        assert answer.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
        streamed = answer.find_element(By.CSS_SELECTOR, ".text").get_property("textContent")
        assert not browser.find_elements(By.CSS_SELECTOR, "#attachments .chip")  # sent with this turn only

        from openai import OpenAI

        data_url = "data:image/png;base64," + base64.b64encode(image_file.read_bytes()).decode("ascii")
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        plain = client.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": QUESTION},
                        {"type": "image_url", "image_url": {"url": data_url}},
                    ],
                }
            ],
            temperature=0,
            max_tokens=NEW_TOKENS,
        )
        assert streamed and streamed == plain.choices[0].message.content

        screenshot = tmp_path / "chat-page.png"
        assert browser.save_screenshot(str(screenshot))
        from PIL import Image

        with Image.open(screenshot) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0


def test_page_shows_the_401_message_until_the_api_key_is_entered(browser, image_model):
    with serve(image_model, api_key="page-secret") as url:
        browser.get(f"{url}/")
        wait_for(browser, lambda d: page_state(d) == "error", "the refused model list")
        error = browser.find_element(By.ID, "error")
        assert error.is_displayed() and "401" in error.text and "API key" in error.text

        browser.find_element(By.ID, "api-key").send_keys("page-secret", Keys.ENTER)
        wait_for(browser, lambda d: page_state(d) == "ready", "the model list read with the key")
        assert not error.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('mmllm-api-key')") == "page-secret"

        ask(browser, "Hello")
        answer = wait_for(browser, last_answer, "the answer sent with the key")
        assert answer.get_attribute("data-state") == "done", error.text


def test_page_shows_a_generated_image_and_plays_generated_audio(browser, drawing_model):
    for modality, selector in (("image", "#messages .message.assistant img"), ("audio", "#messages audio")):
        with serve(drawing_model(modality)) as url:
            browser.get(f"{url}/")
            wait_for(browser, lambda d: page_state(d) == "ready", "the model list read")
            ask(browser, "Make something.")
            answer = wait_for(browser, last_answer, "the streamed answer finished")
            assert answer.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
            items = browser.find_elements(By.CSS_SELECTOR, selector)  # one per signal-token run in the answer
            assert items and all(item.get_attribute("src").startswith(f"data:{modality}/") for item in items)
