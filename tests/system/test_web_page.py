"""The status page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) loads the page that ``sctl metrics`` serves while
supervisord runs the site; an actor killed with ``kill -9`` shows as stopped within 3 s, its
exit in the list of changes, and running again once the watchdog restarted it. Screenshots go
to the test's folder and to ``var/test-artifacts/``."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.echo import EchoServer
from tests.support.stack import ROOT, free_ports, wait_for
from tests.system.conftest import SupervisedSite

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "var" / "test-artifacts"
ECHO = "tests.support.actors:EchoActor"
# Records, with the browser's clock, every state the row of program `arguments[0]` shows and
# when its exit first shows in the list of changes, as the page re-renders on each server-sent
# event. The watchdog may restart it before supervisord is next asked, so that the row goes from
# running to starting: the page then lists the exit it did not see with the time it happened.
WATCH = """
const name = arguments[0];
window.seenStates = [];
window.exitListed = null;
const note = () => {
  const row = document.querySelector(`tr[data-program="${name}"]`);
  const state = row ? row.dataset.state : null;
  const seen = window.seenStates;
  if (!seen.length || seen[seen.length - 1][1] !== state) seen.push([Date.now() / 1000, state]);
  const exit = document.querySelector(`#changes li[data-program="${name}"][data-to="exited"]`);
  if (exit && window.exitListed === null) window.exitListed = Date.now() / 1000;
};
new MutationObserver(note).observe(document.querySelector("main"),
                                   {childList: true, subtree: true});
note();
"""

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian's chromium and chromium-driver packages are not installed (bash "
                "scripts/setup.sh installs them)", allow_module_level=True)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def row(browser: Any, name: str) -> dict[str, str] | None:
    found: dict[str, str] | None = browser.execute_script(
        "const r = document.querySelector(`tr[data-program=\"${arguments[0]}\"]`);"
        "return r ? {state: r.dataset.state, link: r.querySelector('td.link').textContent,"
        " restarts: r.querySelector('td.restarts').textContent} : null;", name)
    return found


def screenshot(browser: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert browser.save_screenshot(str(path)), "no screenshot"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_the_page_shows_a_killed_actor_stopped_then_restarted(
        supervised: Any, echo: EchoServer, browser: Any, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    site: SupervisedSite = supervised(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f'[actors.dev1]\ntype = "{ECHO}"\nport = {echo.port}\n'
        f'[actors.dev2]\ntype = "{ECHO}"\nport = {echo.port}\n')
    site.wait_link_up(["dev1", "dev2"])
    wait_for(lambda: site.info("metrics")["statename"] == "RUNNING", 20,
             f"the metrics program RUNNING:\n{site.log('metrics')[-2000:]}")
    browser.get(f"http://127.0.0.1:{port}/")
    wait_for(lambda: (row(browser, "dev1") or {}).get("state") == "running"
             and (row(browser, "dev1") or {}).get("link", "").startswith("up"), 15,
             f"dev1 running with its link up on the page: {row(browser, 'dev1')}")
    assert browser.execute_script("return document.getElementById('conn').textContent") == "live"
    browser.execute_script(WATCH, "dev1")

    pid = site.info("dev1")["pid"]
    killed = time.time()
    os.kill(pid, signal.SIGKILL)

    def shown() -> tuple[float | None, float | None]:
        """When the row first left running, and when the list first showed the exit."""
        seen, listed = browser.execute_script("return [window.seenStates, window.exitListed]")
        left = next((at for at, state in seen if state != "running"), None)
        return left, listed

    # looked at a few times a second: a script call every few ms keeps the renderer busy
    while None in shown() and time.time() - killed < 3.5:
        time.sleep(0.25)
    left, listed = shown()
    states = browser.execute_script("return window.seenStates")
    assert left is not None and left - killed <= 3.0, \
        f"dev1's row still running 3 s after kill -9: {states} (killed at {killed:.3f})"
    assert listed is not None and listed - killed <= 3.0, \
        f"dev1's exit not listed within 3 s of kill -9 (killed at {killed:.3f}, listed at " \
        f"{listed})"
    print(f"dev1 shown stopped {left - killed:.2f} s after kill -9 ({states[1][1]}), its exit "
          f"listed after {listed - killed:.2f} s")
    screenshot(browser, tmp_path, "web-status-killed.png")

    wait_for(lambda: (row(browser, "dev1") or {}).get("state") == "running", 20,
             f"dev1 running again on the page: {row(browser, 'dev1')}")
    wait_for(lambda: (row(browser, "dev1") or {}).get("restarts") == "1", 10,
             f"dev1's restart counted on the page: {row(browser, 'dev1')}")
    changes = browser.execute_script(
        "return [...document.querySelectorAll('#changes li[data-program=\"dev1\"]')]"
        ".map(li => li.dataset.to)")
    assert "exited" in changes and "running" in changes, changes
    assert site.info("dev1")["pid"] != pid
    after = [state for _, state in browser.execute_script("return window.seenStates")]
    assert after[0] == "running" and after[-1] == "running", after
    page = browser.execute_script(
        "const r = document.querySelector('tr[data-program=\"dev2\"]');"
        "return {last: r.querySelector('td.last').textContent,"
        " drops: r.querySelectorAll('td.num')[4].textContent,"
        " feed: [...document.querySelectorAll('#feed tbody tr')]"
        ".map(tr => tr.querySelector('td.mono').textContent),"
        " alarms: document.getElementById('alarms').textContent}")
    assert page["last"].endswith(" ago") and page["drops"] == "0", page
    assert "evt.dev1.link" in page["feed"], page["feed"]  # the feed's tail: its reconnection
    assert "no alarm" in page["alarms"], page["alarms"]
    path = screenshot(browser, tmp_path, "web-status.png")
    assert path.stat().st_size > 10_000
