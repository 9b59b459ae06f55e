"""The search page in a real browser (issue 38): Debian's chromium driven by Selenium against the service on
localhost: upload a crop, see ranked thumbnails, search again from a result with the keyboard, filter by camera.
Skips, saying why, where no browser can be had (.ci/run installs chromium and chromium-driver with apt)."""
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service is an optional extra: pip install 'reidkit[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the service is an optional extra: pip install 'reidkit[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from reidkit.cli import main  # noqa: E402
from reidkit.deploy.service import SearchService, create_app  # noqa: E402

pytestmark = pytest.mark.slow


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or (os.path.exists("/usr/bin/chromedriver") and "/usr/bin/chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver on this machine (apt-get install chromium chromium-driver; "
                    ".ci/run does it in CI)")
    return browser, driver


@pytest.fixture(scope="module")
def page(tiny_run, tiny_data, tmp_path_factory):
    browser, driver_path = chromium()
    gallery = tmp_path_factory.mktemp("browser") / "gallery.npz"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(gallery), "--no-progress", "--device", "cpu"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(SearchService(gallery, metadata="market1501")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    except Exception as e:  # noqa: BLE001 - a browser that cannot start here is a skip, said why
        server.should_exit = True
        pytest.skip(f"chromium did not start: {str(e).splitlines()[0][:200]}")
    driver.get(f"http://127.0.0.1:{port}/")
    yield driver
    driver.quit()
    server.should_exit = True
    thread.join(timeout=10)


def results(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#results .match")


def test_the_page_searches_an_uploaded_crop_then_from_a_result_with_the_keyboard(page, tiny_data):
    wait = WebDriverWait(page, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "about"), "images"))
    query = sorted((tiny_data / "query").glob("*.jpg"))[0]
    page.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda d: len(results(d)) > 0)
    first = results(page)[0]
    assert first.get_attribute("aria-label").startswith("rank 1, distance")
    assert "matches in" in page.find_element(By.ID, "status").text
    shown = [r.get_attribute("data-id") for r in results(page)]
    first.send_keys(Keys.ENTER)                                   # keyboard: search again from that result
    wait.until(EC.text_to_be_present_in_element((By.ID, "query"), f"gallery item {shown[0]}"))
    wait.until(lambda d: results(d) and results(d)[0].get_attribute("data-id") != shown[0])
    assert shown[0] not in [r.get_attribute("data-id") for r in results(page)]   # the item itself is left out
    shot = os.environ.get("REIDKIT_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        page.save_screenshot(shot)


def test_the_camera_filter_narrows_the_results(page):
    wait = WebDriverWait(page, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cameras input"))
    box = page.find_element(By.CSS_SELECTOR, "#cameras input[value='2']")
    box.click()
    page.find_element(By.ID, "again").click()
    wait.until(lambda d: results(d) and all("camera 2" in r.text for r in results(d)))
    assert all("camera 2" in r.text for r in results(page))
