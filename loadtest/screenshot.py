"""docs/playground.png: the playground page with a generation and a classification, in headless Chromium.

    python -m loadtest.screenshot [--out docs/playground.png]    (make playground-screenshot)

Starts a server of the bundled models on a free port, fills the page as a person would, and saves a
1280 x 900 screenshot. Needs Debian's chromium and chromium-driver and selenium (the dev extra).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from loadtest.measure import REPO, free_port, wait_healthy


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.screenshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "playground.png"))
    a = ap.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    port, state = free_port(), tempfile.mkdtemp(prefix="rnnserve-shot-")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "rnnserve", "serve", "--port", str(port), "--host", "127.0.0.1"],
                              env={**os.environ, "RNNSERVE_STATE_DIR": state, "RNNSERVE_LOG_LEVEL": "warning"},
                              cwd=REPO, start_new_session=True)
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1280,900", "--hide-scrollbars"):
        o.add_argument(flag)
    driver = None
    try:
        wait_healthy(url, server)
        driver = webdriver.Chrome(options=o, service=Service(shutil.which("chromedriver")))
        driver.get(url + "/")
        time.sleep(1)
        for id_, value in (("prompt", "Love is"), ("seed", "12"), ("stop-strings", "\\n%\\n")):
            el = driver.find_element("id", id_)
            el.clear()
            el.send_keys(value)
        driver.find_element("id", "generate").click()
        deadline = time.time() + 30
        while driver.find_element("id", "finish").text in ("…", "–") and time.time() < deadline:
            time.sleep(0.1)
        driver.find_element("id", "classify-text").send_keys("Wo ist der Bahnhof? Ich suche den Zug nach Berlin.")
        time.sleep(1.5)
        driver.save_screenshot(a.out)
        print("written", a.out)
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGTERM)  # the supervisor drains its workers and their helpers
        server.wait(60)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
