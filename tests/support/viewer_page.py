"""Driving the viewer page in the browser tests: a chromium for a test module, and waits on the page's own
state (`document.body.dataset.state`, `window.segserveViewer`), never on sleeps."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.support.paths import REPO
from tests.support.stack import wait_for
from tests.support.viewer import ARTIFACTS


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        return f"browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver"
    if not (REPO / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js").exists():
        return "NiiVue is not installed: run 'npm ci' in the repository root"
    return None


@contextmanager
def chromium_or_skip() -> Iterator[Any]:
    """A fresh headless chromium; skips (fails under CI) when the browser is missing."""
    reason = missing_browser()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"segserve-chromium-{os.getpid()}"
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_state(driver: Any, *states: str, timeout: float = 120) -> str:
    """Wait until the page's state is one of ``states``; an unexpected "error" state fails at once."""

    def current() -> str | None:
        state = driver.execute_script("return document.body.dataset.state")
        if state == "error" and "error" not in states:
            raise AssertionError(driver.execute_script("return window.segserveViewer.error"))
        return state if state in states else None

    return str(wait_for(current, timeout, f"page state {states}", interval=0.1))


def page(driver: Any, expression: str) -> Any:
    """The value of ``window.segserveViewer.<expression>``."""
    return driver.execute_script(f"return window.segserveViewer.{expression}")


def wait_page(driver: Any, expression: str, what: str, timeout: float = 60) -> Any:
    """Wait until the expression on window.segserveViewer is truthy and the page is idle again."""
    value = wait_for(lambda: page(driver, expression), timeout, what, interval=0.1)
    wait_state(driver, "loaded", timeout=timeout)
    return value


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"viewer-{name}.png"))


def select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def sign_in(driver: Any, base_url: str, key: str) -> None:
    """Sign in with ``key`` and show every job in the worklist (any status)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/viewer")
    wait_state(driver, "signed-out")
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    wait_state(driver, "worklist")
    select(driver, "filter-status", "")
    wait_state(driver, "worklist")


def sign_in_and_open(driver: Any, base_url: str, key: str, job_id: str, timeout: float = 180) -> None:
    """Sign in with ``key`` and open ``job_id`` from the worklist."""
    from selenium.webdriver.common.by import By

    sign_in(driver, base_url, key)
    driver.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]').click()
    wait_state(driver, "loaded", timeout=timeout)


def stroke(driver: Any, dx: int, dy: int, length: int) -> list[int]:
    """Drag the mouse with the left button held along a horizontal line on the prediction canvas, from
    (dx, dy) pixels off its centre; returns the file voxel under the pen's last position (the crosshair
    follows the pen)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "gl")
    chain = ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click_and_hold()
    for _ in range(length // 20):
        chain = chain.move_by_offset(20, 0)
    chain.release().perform()
    return list(page(driver, "readout.voxel"))
