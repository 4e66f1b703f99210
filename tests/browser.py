"""A real browser for the tests: Debian's headless Chromium driven by selenium through chromedriver."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_SECONDS = 60  # a tiny model answers in seconds on a CPU; CI machines may be slow


class BrowserMissing(RuntimeError):
    pass


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a fresh profile in a temporary folder) as a selenium WebDriver, quit on exit.
    Raises BrowserMissing, saying how to install it, when the Debian packages are not there."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise BrowserMissing(
            f"The browser tests need Debian's Chromium and its driver, and this machine lacks {', '.join(missing)}: "
            "install them with `apt-get install -y chromium chromium-driver` (.ci/run does this in CI)."
        )
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="mmllm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",  # a small /dev/shm in containers
        f"--user-data-dir={profile}",
        "--window-size=1000,800",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for failure messages
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    """``condition(driver)`` once it is truthy; on a timeout, an AssertionError naming ``what`` with the page's
    error box and the browser console, which say why far more often than the timeout does."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds).until(condition)
    except TimeoutException:
        error = driver.execute_script("const e = document.getElementById('error'); return e ? e.textContent : null")
        console = [entry["message"] for entry in driver.get_log("browser")]
        raise AssertionError(
            f"The page did not reach: {what} within {seconds} s. Its error box says {error!r}; the console: {console}"
        ) from None
