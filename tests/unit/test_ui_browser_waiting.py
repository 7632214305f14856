"""The UI tests' waits (tests/integration/ui_browser.py, waiting) look again when a look met a navigation in progress:
test_ui.py's test_bob_sees_none_of_it failed once under load (~7) with chromedriver's "aborted by navigation" while
it waited for the sign-in form that its sign-out's redirect was loading. Only that error: any other is raised at
once, and a navigation that never ends fails at the wait's deadline. A fake driver stands in for the browser."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("selenium")

from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402

from tests.integration import ui_browser  # noqa: E402

# chromedriver 150's answer, as Selenium 4.51 raises it (a plain WebDriverException: the W3C error has no class)
NAVIGATION = "aborted by navigation: Inspected target navigated or closed"


class Form:
    def is_displayed(self) -> bool:
        return True


class Driver:
    """find_element raises each of `errors` in turn, then finds the form."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.looks = 0

    def find_element(self, by, value):
        self.looks += 1
        if self.errors:
            raise self.errors.pop(0)
        return Form()


@pytest.fixture(autouse=True)
def short(monkeypatch):
    monkeypatch.setattr(ui_browser, "WAIT", 0.5)
    monkeypatch.setattr(ui_browser, "POLL", 0.01)


def test_a_look_that_met_a_navigation_is_looked_at_again():
    driver = Driver(WebDriverException(NAVIGATION), WebDriverException(NAVIGATION))
    found = ui_browser.waiting(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    assert isinstance(found, Form) and driver.looks == 3


def test_a_navigation_that_never_ends_fails_at_the_deadline():
    driver = Driver(*[WebDriverException(NAVIGATION)] * 10000)
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        ui_browser.waiting(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    assert 0.5 <= time.monotonic() - started < 5 and driver.looks > 2


def test_any_other_error_of_the_driver_is_raised_at_once():
    driver = Driver(WebDriverException("unknown error: session deleted because of page crash"))
    with pytest.raises(WebDriverException, match="page crash"):
        ui_browser.waiting(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    assert driver.looks == 1


def test_the_waits_own_ignored_errors_are_still_ignored():
    """pick_workspace's wait ignores a stale element besides the default missing one."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    driver = Driver(NoSuchElementException("no form yet"), StaleElementReferenceException("stale"))
    found = ui_browser.waiting(driver, ignored_exceptions=(StaleElementReferenceException,)).until(
        ec.visibility_of_element_located((By.ID, "username")))
    assert isinstance(found, Form) and driver.looks == 3
