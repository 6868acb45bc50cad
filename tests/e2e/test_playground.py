"""The playground page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium), against a real server of the bundled models."""
import os
import re
import shutil
import time

import httpx
import pytest

from tests.conftest import ROOT, Server


def chrome(tmp):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            raise RuntimeError("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={tmp}", "--window-size=1280,900"):
        o.add_argument(flag)
    return webdriver.Chrome(options=o, service=DriverService(shutil.which("chromedriver")))


@pytest.fixture(scope="module")
def site(bundled, tmp_path_factory):
    d = chrome(tmp_path_factory.mktemp("chrome"))
    yield bundled, d
    d.quit()


def wait(cond, timeout=30, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out waiting")


def fill(d, **fields):
    for id_, value in fields.items():
        el = d.find_element("id", id_.replace("_", "-"))
        el.clear()
        el.send_keys(str(value))


def open_page(s, d):
    d.get(s.url + "/")
    wait(lambda: d.find_elements("css selector", "#model option"))


def text_of(d, id_) -> str:
    """The element's exact text (selenium's .text renders whitespace)."""
    return d.find_element("id", id_).get_attribute("textContent")


def generated(d) -> str:
    out = text_of(d, "output")
    prompt = "".join(e.get_attribute("textContent") for e in d.find_elements("css selector", "#output .prompt"))
    return out[len(prompt):] if out.startswith(prompt) else out


def test_the_page_is_self_contained_and_accessible(site):
    s, d = site
    r = httpx.get(s.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']https?://""", r.text)  # no CDN, no external font
    for id_ in ("prompt", "generate", "stop", "output", "ttft", "tps", "tokens", "cps", "chars", "conversation",
                "classify-text", "classify", "classify-result", "api-key", "error"):
        assert f'id="{id_}"' in r.text, id_
    open_page(s, d)
    for el in d.find_elements("css selector", "input, select, textarea"):  # every control has a label
        assert d.find_elements("css selector", f'label[for="{el.get_attribute("id")}"]'), el.get_attribute("id")
    assert [o.text for o in d.find_elements("css selector", "#model option")] == ["fortunes", "fortunes-bpe"]
    assert [o.text for o in d.find_elements("css selector", "#classify-model option")] == ["langid"]


def test_generating_with_a_seed_gives_the_text_the_api_gives(site):
    s, d = site
    open_page(s, d)
    fill(d, prompt="Love is", temperature=0.8, max_tokens=60, seed=12)
    d.find_element("id", "generate").click()
    wait(lambda: d.find_element("id", "finish").text not in ("…", "–"))
    api = httpx.post(s.url + "/generate", json={"prompt": "Love is", "temperature": 0.8, "max_tokens": 60, "seed": 12,
                                                "stream": False}).json()
    assert generated(d) == api["text"] and d.find_element("id", "finish").text == "length"
    assert d.find_element("id", "ttft").text.endswith("ms") and d.find_element("id", "tokens").text == "60"


def test_sampling_controls_and_json_mode_give_what_the_api_gives(site):
    import json
    s, d = site
    open_page(s, d)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "age"], "additionalProperties": False}
    fill(d, prompt="Who?", temperature=0.8, max_tokens=80, seed=4, frequency_penalty=0.8, min_p=0.05)
    d.find_element("id", "json-mode").click()
    assert d.find_element("id", "json-schema").is_displayed()
    fill(d, json_schema=json.dumps(schema))
    d.find_element("id", "generate").click()
    wait(lambda: d.find_element("id", "finish").text not in ("…", "–"))
    api = httpx.post(s.url + "/generate", json={
        "prompt": "Who?", "temperature": 0.8, "max_tokens": 80, "seed": 4, "frequency_penalty": 0.8, "min_p": 0.05,
        "stream": False, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}).json()
    assert generated(d) == api["text"] and d.find_element("id", "finish").text == api["finish_reason"] == "stop"
    assert set(json.loads(api["text"])) == {"name", "age"}
    fill(d, json_schema="{not json")
    d.find_element("id", "generate").click()
    assert "not valid JSON" in wait(lambda: d.find_element("id", "error").text)
    d.find_element("id", "json-mode").click()
    fill(d, frequency_penalty=0, min_p=0)


def test_a_subword_model_streams_whole_characters_and_counts_its_tokens(site):
    from selenium.webdriver.support.ui import Select
    s, d = site
    open_page(s, d)
    Select(d.find_element("id", "model")).select_by_value("fortunes-bpe")
    fill(d, prompt="Love is", temperature=0.8, max_tokens=60, seed=12)
    d.find_element("id", "generate").click()
    wait(lambda: d.find_element("id", "finish").text not in ("…", "–"))
    api = httpx.post(s.url + "/generate", json={"prompt": "Love is", "temperature": 0.8, "max_tokens": 60, "seed": 12,
                                                "model": "fortunes-bpe", "stream": False}).json()
    assert generated(d) == api["text"] and "\ufffd" not in api["text"]
    assert d.find_element("id", "tokens").text == "60" and d.find_element("id", "tps").text not in ("–", "")
    assert int(d.find_element("id", "chars").text) == len(api["text"]) > 60  # several characters a token


def test_the_text_streams_in_and_stop_frees_the_slot(site):
    s, d = site
    open_page(s, d)
    fill(d, prompt="The", max_tokens=4096, seed=1)
    d.find_element("id", "generate").click()
    seen = []
    while len(seen) < 4:  # the output grows over several reads before the final event
        n = int(d.find_element("id", "chars").text or 0)
        if n and (not seen or n > seen[-1]):
            seen.append(n)
        assert d.find_element("id", "finish").text == "…", "finished before it could be watched"
        time.sleep(0.02)
    assert d.find_element("id", "cps").text not in ("–", "")
    d.find_element("id", "stop").click()
    wait(lambda: d.find_element("id", "finish").text == "stopped")

    def active():
        line = next(l for l in httpx.get(s.url + "/metrics").text.splitlines()
                    if l.startswith("rnnserve_active_streams "))
        return float(line.split()[1]) == 0
    wait(active, 10)
    assert int(d.find_element("id", "chars").text) < 4096


def test_a_two_turn_conversation(site):
    s, d = site
    open_page(s, d)
    d.find_element("id", "conversation").click()
    fill(d, prompt="Q: Why", temperature=0, max_tokens=20)
    d.find_element("id", "generate").click()
    wait(lambda: "turn 1" in d.find_element("id", "session-info").text)
    first = generated(d)
    fill(d, prompt="")
    d.find_element("id", "prompt").clear()
    d.find_element("id", "generate").click()
    wait(lambda: "turn 2" in d.find_element("id", "session-info").text)
    info = d.find_element("id", "session-info").text
    assert "4,096 bytes" in info
    whole = httpx.post(s.url + "/generate", json={"prompt": "Q: Why", "temperature": 0, "max_tokens": 40,
                                                  "stream": False}).json()["text"]
    assert text_of(d, "output") == "Q: Why" + whole and first == whole[:20]
    d.find_element("id", "reset").click()
    wait(lambda: d.find_element("id", "session-info").text == "")


def test_classify_as_you_type(site):
    s, d = site
    open_page(s, d)
    d.find_element("id", "classify-text").send_keys("Wo ist der Bahnhof? Ich suche den Zug nach Berlin.")
    label = wait(lambda: d.find_elements("id", "classify-label"))[0]
    assert label.text.startswith("de")
    bars = d.find_elements("css selector", "#classify-result .bar")
    assert len(bars) == 8 and bars[0].get_attribute("aria-label") == "de"


def test_a_bad_value_is_shown_in_plain_words(site):
    s, d = site
    open_page(s, d)
    fill(d, temperature=9)
    d.find_element("id", "generate").click()
    err = wait(lambda: d.find_element("id", "error").text)
    assert "temperature" in err and "5" in err and d.find_element("id", "error").is_displayed()


def test_api_key_mode(tmp_path):
    s = Server(ROOT / "models", RNNSERVE_API_KEY="sekrit", RNNSERVE_STATE_DIR=tmp_path / "state")
    d = chrome(tmp_path / "chrome")
    try:
        d.get(s.url + "/")  # the page itself needs no key
        err = wait(lambda: d.find_element("id", "error").text)
        assert "API key" in err
        d.find_element("id", "api-key").send_keys("sekrit")
        d.find_element("id", "prompt").click()  # leaving the field stores the key and reloads the models
        wait(lambda: d.find_elements("css selector", "#model option"))
        assert d.execute_script("return sessionStorage.getItem('rnnserve-api-key')") == "sekrit"
        fill(d, max_tokens=10)
        d.find_element("id", "generate").click()
        wait(lambda: d.find_element("id", "finish").text == "length")
        assert not d.find_element("id", "error").is_displayed()
    finally:
        d.quit()
        s.stop()


def test_keyboard_alone_and_a_narrow_screen(site):
    from selenium.webdriver.common.keys import Keys
    s, d = site
    open_page(s, d)
    fill(d, max_tokens=12, seed=3)
    prompt = d.find_element("id", "prompt")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter in the prompt generates
    wait(lambda: d.find_element("id", "finish").text == "length")
    d.find_element("id", "seed").send_keys(Keys.TAB)  # Tab moves through the controls in reading order
    assert d.switch_to.active_element.get_attribute("id") == "stop-strings"
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 360, "height": 780, "deviceScaleFactor": 1,
                                                            "mobile": True})
    try:
        d.get(s.url + "/")
        wait(lambda: d.find_elements("css selector", "#model option"))
        assert d.execute_script("return document.documentElement.scrollWidth") <= 360  # nothing runs off the side
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
