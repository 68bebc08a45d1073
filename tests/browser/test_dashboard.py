"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) against a real batchd with the api on.

`make test-browser` runs this (never `make test`): it installs the two Debian packages when
they are missing. Where no Chromium can be had the test is skipped, saying why. It saves
screenshots: docs/dashboard.png (the job list) and docs/dashboard-job.png (a job's page).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import until
from tests.httpkit import Client, api_address, config_text, make_tokens

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEADLINE = 60.0


def _require_browser() -> Any:
    """selenium.webdriver, or skip saying what is missing (Chromium, its driver, or the
    selenium package: `pytest -m browser` run directly, without `make test-browser`,
    which installs them). Checked before anything is started."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        pytest.skip(f"no Chromium here ({CHROMIUM}, {DRIVER}): `make test-browser` installs "
                    "Debian's chromium and chromium-driver")
    return pytest.importorskip("selenium.webdriver",
                               reason="selenium is not installed: `make test-browser` "
                                      "installs it (pip install -e '.[browser]')")


def _driver(profile: Path) -> Any:
    webdriver = _require_browser()
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1280,800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


class Site:
    """batchd with the api, tokens, and a browser pointed at the dashboard."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = root / "batchd.yaml"
        self.cfg.write_text(config_text(root / "state"))
        self.tokens = make_tokens(self.cfg)
        with open(root / "batchd.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                          str(self.cfg)], stdout=log, stderr=log)
        from supervisor.state.layout import Layout

        self.address = until("the api", lambda: api_address(Layout(root / "state")), DEADLINE)
        self.base = f"http://{self.address[0]}:{self.address[1]}/"
        self.api = Client(self.address, self.tokens["admin"])

    def submit(self, prompt: str) -> str:
        status, body = self.api.json("POST", "/v1/jobs", {"agent": "shell", "prompt": prompt})
        assert 201 == status, body
        job_id: str = body["ids"][0]
        return job_id

    def output(self, job_id: str) -> str:
        done = subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.cfg),
                               "output", job_id], capture_output=True, check=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        return done.stdout.decode()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    _require_browser()
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _text(driver: Any, css: str) -> str:
    """The element's text, read in one script call (the page re-renders its tables every
    second or so: a found element may be replaced before a second call reads it)."""
    got = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css)
    return str(got).strip()


def test_the_dashboard_follows_jobs_cancels_and_refuses_without_a_token(site: Site) -> None:
    """Token entered once; a job submitted by API shows up and goes to completed; its page
    streams the whole output; a long job is cancelled with the button; a wrong token is
    refused (401) and a request without one too."""
    from selenium.webdriver.common.by import By

    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    driver = _driver(profile)
    try:
        driver.get(site.base)
        until("the token form", lambda: driver.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys(site.tokens["admin"])
        driver.find_element(By.ID, "login-button").click()
        until("signed in", lambda: "token admin (admin)" == _text(driver, "#who"))

        job = site.submit("for i in 1 2 3 4 5 6; do echo \"step $i of 6\"; sleep 0.3; done")
        failing = site.submit("echo 'tests: 3 failed' >&2; exit 3")
        long = site.submit("echo started; for i in $(seq 1 600); do echo tick $i; sleep 0.1; done")
        row = f"#jobs tr[data-id='{job}'] .state"
        until("the job listed", lambda: _text(driver, row) != "", DEADLINE)
        until("completed in the list", lambda: _text(driver, row) == "completed", DEADLINE)
        until("failed in the list", lambda: _text(
            driver, f"#jobs tr[data-id='{failing}'] .state") == "failed", DEADLINE)
        (ROOT / "docs").mkdir(exist_ok=True)
        driver.save_screenshot(str(ROOT / "docs" / "dashboard.png"))

        driver.get(site.base + f"#/job/{job}")
        until("the whole output", lambda: "ended (completed)" == _text(driver, "#out-status"),
              DEADLINE)
        shown = driver.execute_script("return document.getElementById('output').textContent")
        assert site.output(job) == shown

        driver.get(site.base + f"#/job/{long}")
        until("running", lambda: _text(driver, "#job-state") == "running", DEADLINE)
        until("its lines live", lambda: "tick 20" in _text(driver, "#output"), DEADLINE)
        driver.save_screenshot(str(ROOT / "docs" / "dashboard-job.png"))
        driver.find_element(By.ID, "cancel").click()
        until("cancelled", lambda: _text(driver, "#job-state") == "cancelled", DEADLINE)

        driver.execute_script("sessionStorage.clear()")
        driver.get(site.base)
        until("asked for a token", lambda: driver.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys("bdt_wrong")
        driver.find_element(By.ID, "login-button").click()
        until("refused", lambda: "401" in _text(driver, "#login-error"))
        status = driver.execute_script(
            "const r = await fetch('/v1/status'); return r.status;")
        assert 401 == status
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
