"""The browser page (GET /, serve/static/index.html) in a real headless Chromium driven by Selenium, against
the real Serve app: a photo of several faces uploaded through the file input, the camera path through
Chromium's fake camera playing a y4m file, and a server error shown as text.

Needs the fixture ``served_url``: the base URL (no trailing slash) of the real Serve app of a run directory,
serving GET /, GET /models and POST /predict?faces=1. Chromium and its driver come from Debian (``make browser``, which
``make test`` runs, installs them); no browser or driver is downloaded here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests

from bench import browser

WAIT_S = 60  # every wait below is bounded by this
TIMEOUT_S = 60  # per API request
_paste = browser.paste
_console = browser.console


def _face_crops() -> list[str]:
    crops = browser.face_crops()
    if not crops:
        pytest.skip(f"{browser.FACES_DIR} holds no *.jpg: the face photos this test pastes together are not on this branch")
    return crops


def _chrome(*arguments: str):
    """A headless Chromium on the system's driver (bench.browser.chrome); a missing one fails, saying why."""
    try:
        return browser.chrome(*arguments)
    except browser.BrowserMissing as err:
        pytest.fail(str(err))


def _api_faces(served_url: str, data: bytes) -> dict:
    response = requests.post(f"{served_url}/predict", params={"faces": 1}, data=data,
                             headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"image", "faces"}, body
    return body


def _classes(served_url: str) -> list[str]:
    """The served run's classes in its order: what the page must show (it names none itself)."""
    return requests.get(f"{served_url}/models", timeout=TIMEOUT_S).json()["classes"]


def _settled(driver) -> str | bool:
    state = driver.find_element("id", "status").get_attribute("data-state")
    return state if state in ("ok", "empty", "error") else False


def _wait(driver, condition, what: str):
    """condition's first truthy value within WAIT_S, else a failure saying what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        pytest.fail(f"waited {WAIT_S} s for {what}; #status: {driver.find_element('id', 'status').text!r}, "
                    f"#error: {driver.find_element('id', 'error').text!r}, "
                    f"{len(driver.find_elements('css selector', '#boxes .face'))} .face; browser log:\n{_console(driver)}")


def wait_until_answered(url: str, what: str) -> None:
    """Until GET ``url`` answers 200 (an app deployed with serve.run(blocking=False)), at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if requests.get(url, timeout=TIMEOUT_S).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{what} never answered"
        time.sleep(0.5)


@pytest.fixture
def driver():
    d = _chrome()
    yield d
    d.quit()


def test_page_is_served_self_contained(served_url):
    response = requests.get(f"{served_url}/", timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ('id="file"', 'id="camera"', 'id="status"', 'id="boxes"', "predict?faces=1"):
        assert element in page, element
    # Works offline: every URL it names is inline (data:) or relative to the page, none names a host.
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']|url\(\s*["']?([^"')]*)""", page, re.I)
    assert not [u for pair in urls for u in pair if re.match(r"\s*(?:[a-z][a-z0-9+.-]*:|//)", u, re.I)
                and not u.strip().startswith("data:")], urls
    assert "http://" not in page and "https://" not in page


def test_upload_draws_one_labelled_box_per_face_the_api_finds(served_url, driver, tmp_path):
    crops = _face_crops()[:6]
    photo = tmp_path / "several_faces.jpg"
    _paste(crops, columns=3, side=180, gap=80).save(photo, quality=92)
    api = _api_faces(served_url, photo.read_bytes())
    expected = api["faces"]
    classes = _classes(served_url)
    # Several faces, or the count below would prove little.
    assert len(expected) >= 2, f"the API found {len(expected)} of {len(crops)} pasted faces: {api}"

    driver.get(f"{served_url}/")
    driver.find_element("id", "file").send_keys(str(photo))
    state = _wait(driver, _settled, "the page's answer (#status data-state ok, empty or error)")
    driver.save_screenshot(str(tmp_path / "upload.png"))
    error = driver.find_element("id", "error").text
    assert state == "ok" and not error, (state, error, _console(driver))

    faces = driver.find_elements("css selector", "#boxes .face")
    assert len(faces) == len(expected), (len(faces), expected)
    W, H = api["image"]["width"], api["image"]["height"]
    img = driver.find_element("id", "photo")
    assert driver.execute_script("return arguments[0].naturalWidth", img) == W
    shown = img.rect  # CSS pixels of the displayed photo
    scale_x, scale_y = W / shown["width"], H / shown["height"]
    drawn = []
    for el in faces:
        label = el.get_attribute("data-label")
        assert label in classes, label
        tag = el.find_element("css selector", ".face-label")
        assert tag.is_displayed() and tag.text.startswith(label), tag.text
        r = el.rect
        drawn.append((label, ((r["x"] - shown["x"]) * scale_x, (r["y"] - shown["y"]) * scale_y,
                              r["width"] * scale_x, r["height"] * scale_y)))
    # Each face the API answers has its box drawn where the API put it (in image pixels, within a few pixels
    # of borders and rounding), with the API's label for that face.
    tolerance = 0.02 * max(W, H)
    for face in expected:
        b = face["box"]
        near = [lab for lab, (x, y, w, h) in drawn
                if max(abs(x - b["x"]), abs(y - b["y"]), abs(w - b["width"]), abs(h - b["height"])) <= tolerance]
        assert len(near) == 1, (b, drawn)
        top, second = sorted(face["probabilities"].values())[::-1][:2]
        if top - second > 0.01:  # a near tie may fall either way between two runs of the same bytes
            assert near[0] == face["label"], (face, near)

    # One probability card per face: a bar per class (the ensemble) that adds up to 1, and per model.
    cards = driver.find_elements("css selector", "#results .result")
    assert len(cards) == len(expected)
    for card in cards:
        bars = card.find_elements("css selector", ":scope > .bar")
        assert [bar.get_attribute("data-class") for bar in bars] == classes
        assert sum(float(bar.get_attribute("data-p")) for bar in bars) == pytest.approx(1.0, abs=1e-4)
        assert card.find_elements("css selector", ".models .model .bar")
    # Clicking a box selects its face and card.
    faces[-1].click()
    assert "selected" in faces[-1].get_attribute("class")
    assert "selected" in cards[-1].get_attribute("class") and "selected" not in cards[0].get_attribute("class")


def test_server_error_is_shown_as_text(served_url, driver, tmp_path):
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_bytes(b"these bytes are no image" * 20)
    response = requests.post(f"{served_url}/predict", params={"faces": 1}, data=bad.read_bytes(),
                             headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)
    assert response.status_code == 400
    message = response.json()["error"]

    driver.get(f"{served_url}/")
    driver.find_element("id", "file").send_keys(str(bad))
    state = _wait(driver, _settled, "the page's answer (#status data-state ok, empty or error)")
    shown = driver.find_element("id", "error").text
    assert state == "error" and "400" in shown and str(message) in shown, (state, shown, message)
    assert not driver.find_elements("css selector", "#boxes .face")


# --- the camera -----------------------------------------------------------------------------------------
# Wraps the page's fetch of /predict, as an observer beside the page's own counters: when each request
# starts and ends, and the most in flight at once.
COUNT_FETCHES = """
window.__predict = {starts: [], ends: [], inFlight: 0, maxInFlight: 0};
const original = window.fetch;
window.fetch = async (...args) => {
  const s = window.__predict;
  if (!String(args[0]).includes("predict")) return original(...args);
  s.starts.push(performance.now());
  s.inFlight++; s.maxInFlight = Math.max(s.maxInFlight, s.inFlight);
  try { return await original(...args); }
  finally { s.inFlight--; s.ends.push(performance.now()); }
};
"""
READ_CAMERA = """
const d = document.getElementById('camera').dataset;
const counters = Object.fromEntries(['frames', 'sent', 'answered', 'dropped', 'stale', 'failed', 'inFlight',
                                     'inFlightLimit'].map((k) => [k, Number(d[k] || 0)]));
return {...counters, on: d.on, frameSize: d.frameSize, fetches: window.__predict};
"""
BOX_LABELS = "return [...document.querySelectorAll('#boxes .face')].map((el) => el.dataset.label);"
SLOW_S = 0.5  # the slow app's answer delay (serve.app.AppArgs.answer_delay_s)


def _camera_video(tmp_path, crops: list[str]) -> str:
    """A looped second of 640x480 at 30 fps in which the faces drift: every camera frame differs."""
    video = str(tmp_path / "camera.y4m")
    browser.write_y4m(browser.drifting_frames(crops, (640, 480), side=200, frames=30), video, fps=30)
    return video


def _camera_page(url: str, video: str, query: str = ""):
    driver = _chrome(*browser.fake_camera_arguments(video))
    driver.get(f"{url}/{query}")
    driver.execute_script(COUNT_FETCHES)
    driver.find_element("id", "camera").click()
    return driver


def _check_counts(c: dict, limit: int) -> None:
    """What the page's counters must say at any moment: every camera frame is sent, dropped or (the newest)
    not yet either; every frame sent is answered, discarded, failed or in flight; never more in flight
    than the limit, and the page sent exactly the requests its fetch saw."""
    assert c["inFlightLimit"] == limit and 0 <= c["inFlight"] <= limit, c
    assert c["frames"] - c["sent"] - c["dropped"] in (0, 1), c
    assert c["sent"] == c["answered"] + c["stale"] + c["failed"] + c["inFlight"], c
    assert c["sent"] == len(c["fetches"]["starts"]) and c["fetches"]["maxInFlight"] <= limit, c


def _stops(driver) -> None:
    camera = driver.find_element("id", "camera")
    camera.click()
    assert camera.get_attribute("data-on") == "0"
    sent = len(driver.execute_script("return window.__predict.starts"))
    time.sleep(1.0)
    assert len(driver.execute_script("return window.__predict.starts")) == sent  # stopped means stopped


def test_camera_frames_get_boxes(served_url, tmp_path):
    crops = _face_crops()[:2]
    driver = _camera_page(served_url, _camera_video(tmp_path, crops))
    try:
        # Read in one script: the boxes are redrawn with every answer, so an element found in one call may
        # be gone by the next.
        labels = _wait(driver, lambda d: d.execute_script(BOX_LABELS) or _settled(d) == "error",
                       "a face box over the camera's frames (or an error)")
        error = driver.find_element("id", "error").text
        assert not error, (driver.find_element("id", "status").text, error, _console(driver))
        driver.save_screenshot(str(tmp_path / "camera.png"))
        assert 1 <= len(labels) <= len(crops)
        assert set(labels) <= set(_classes(served_url)), labels
        assert driver.execute_script("return document.getElementById('video').videoWidth") == 640
        # Frames keep being answered, up to the page's default of two in flight, each sent at 480 px.
        _wait(driver, lambda d: d.execute_script(READ_CAMERA)["answered"] >= 5, "5 answered camera frames")
        counts = driver.execute_script(READ_CAMERA)
        assert counts["on"] == "1" and counts["frameSize"] == "480x360", counts
        _check_counts(counts, limit=2)
        assert not driver.find_element("id", "error").text
        _stops(driver)
    finally:
        driver.quit()


@pytest.fixture
def slow_url(run, served_url):
    """The session's run served again at /slow, every answer held SLOW_S first (the app's own setting,
    answer_delay_s): a server slower than the camera."""
    from ray import serve

    from serve.app import AppArgs, build_app

    args = AppArgs(run_dir=run[0], model_cpus=0.05, ingress_cpus=0.05, face_cpus=0.05, answer_delay_s=SLOW_S)
    serve.run(build_app(args), name="slow", route_prefix="/slow", blocking=False)
    url = f"{served_url}/slow"
    wait_until_answered(f"{url}/healthz", "the slow app")
    yield url
    serve.delete("slow")


def test_camera_drops_frames_when_the_server_is_slow(slow_url, tmp_path):
    driver = _camera_page(slow_url, _camera_video(tmp_path, _face_crops()[:2]), "?camera_inflight=1")
    try:
        _wait(driver, lambda d: d.execute_script(READ_CAMERA)["answered"] >= 2, "2 answered camera frames")
        samples = []
        for _ in range(6):
            samples.append(driver.execute_script(READ_CAMERA))
            _check_counts(samples[-1], limit=1)
            time.sleep(SLOW_S)
        first, last = samples[0], samples[-1]
        # The camera goes on presenting frames while each answer is held: those are dropped, not kept for
        # later, so a frame sent is always the newest and the requests go strictly one after another.
        assert last["answered"] > first["answered"] and last["dropped"] > first["dropped"], (first, last)
        fetches = last["fetches"]
        assert fetches["maxInFlight"] == 1
        assert all(start >= end for start, end in zip(fetches["starts"][1:], fetches["ends"])), fetches
        assert not driver.find_element("id", "error").text
        _stops(driver)
    finally:
        driver.quit()


# --- any class set -------------------------------------------------------------------------------------

FOUR_CLASSES = ["angry", "happy", "sad", "surprised"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def four_class_url(ray_session, served_url, tmp_path_factory):
    """A run of four classes (generated faces; "surprised" is a copy of "sad": the page only has to show
    them, not tell them apart), trained as small as the tune command goes and served beside the session's
    run at /four."""
    from ray import serve

    from raymotion.data.synthetic import make_synthetic_faces
    from serve.app import AppArgs, build_app

    root = make_synthetic_faces(tmp_path_factory.mktemp("four-faces"), train_per_class=24, val_per_class=8, size=48,
                                seed=4)
    for split in ("train", "val"):
        shutil.copytree(os.path.join(root, split, "sad"), os.path.join(root, split, "surprised"))
    # A folder of its own: the tune command points <runs>/latest at its run, and the session's other run
    # (what test_end_to_end checks <runs>/latest against) lives beside the temp folders.
    out = str(tmp_path_factory.mktemp("four") / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "raymotion.tune", "--address", ray_session.get_runtime_context().gcs_address,
         "--data", root, "--models", "lenet", "--preset", "smoke", "--num-samples", "1", "--epochs", "1",
         "--no-int8", "--out", out],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    serve.run(build_app(AppArgs(run_dir=out, model_cpus=0.05, ingress_cpus=0.05, face_cpus=0.05)), name="four",
              route_prefix="/four", blocking=False)
    url = f"{served_url}/four"
    wait_until_answered(f"{url}/models", "the four-class app")
    yield url
    serve.delete("four")


def test_the_page_shows_the_classes_of_the_run_it_serves(four_class_url, driver, tmp_path):
    models = requests.get(f"{four_class_url}/models", timeout=TIMEOUT_S).json()
    assert models["classes"] == FOUR_CLASSES and list(models["colors"]) == FOUR_CLASSES
    assert len(set(models["colors"].values())) == 4  # four colours a reader can tell apart

    driver.get(f"{four_class_url}/")
    _wait(driver, lambda d: d.find_element("id", "classes").get_attribute("data-state") != "loading",
          "the page's class legend (from GET models)")
    legend = driver.find_elements("css selector", "#classes .class")
    assert [el.get_attribute("data-class") for el in legend] == FOUR_CLASSES, _console(driver)
    assert [el.get_attribute("data-color") for el in legend] == [models["colors"][c] for c in FOUR_CLASSES]
    assert "surprised" in driver.find_element("id", "about").text

    photo = tmp_path / "faces.jpg"
    _paste(_face_crops()[:2], columns=2, side=180, gap=80).save(photo, quality=92)
    driver.find_element("id", "file").send_keys(str(photo))
    state = _wait(driver, _settled, "the page's answer (#status data-state ok, empty or error)")
    assert state == "ok", (state, driver.find_element("id", "error").text, _console(driver))
    cards = driver.find_elements("css selector", "#results .result")
    assert cards
    for card in cards:
        bars = card.find_elements("css selector", ":scope > .bar")
        assert [bar.get_attribute("data-class") for bar in bars] == FOUR_CLASSES
        assert sum(float(bar.get_attribute("data-p")) for bar in bars) == pytest.approx(1.0, abs=1e-4)
    # Each box and card in its class's colour, as GET models gives it.
    for el in driver.find_elements("css selector", "#boxes .face") + cards:
        label = el.get_attribute("data-label")
        assert label in FOUR_CLASSES
        assert driver.execute_script("return arguments[0].style.getPropertyValue('--c')", el) == models["colors"][label]
