"""The search page in a real browser (issue 38): Debian's chromium driven by Selenium against the service on
localhost: upload a crop, see ranked thumbnails, search again from a result with the keyboard, filter by camera.
Skips, saying why, where no browser can be had (.ci/run installs chromium and chromium-driver with apt)."""
import contextlib
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
from reidkit.deploy.service import SearchService  # noqa: E402
from reidkit.deploy.web import create_app  # noqa: E402

pytestmark = pytest.mark.slow


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or (os.path.exists("/usr/bin/chromedriver") and "/usr/bin/chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver on this machine (apt-get install chromium chromium-driver; "
                    ".ci/run does it in CI)")
    return browser, driver


@contextlib.contextmanager
def served_page(gallery: Path, **service_options):
    """Chromium on the search page of a service over ``gallery`` (on a free localhost port)."""
    browser, driver_path = chromium()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(SearchService(gallery, **service_options)),
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
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(tiny_run, tiny_data, tmp_path_factory):
    chromium()
    gallery = tmp_path_factory.mktemp("browser") / "gallery.npz"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(gallery), "--no-progress", "--device", "cpu"]) == 0
    with served_page(gallery, metadata="market1501") as driver:
        yield driver


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


def test_the_page_asks_for_the_camera_index_a_sie_model_needs(tmp_path):
    """A gallery whose model embeds each crop's camera (TransReID's SIE): the page shows the camera-index field,
    says what is missing without it, and with it finds the crop itself first."""
    pytest.importorskip("timm", reason="timm is an optional extra: pip install 'reidkit[timm]'")
    import numpy as np
    import torch
    from PIL import Image

    from reidkit.engine.checkpoint import EmbeddingSpec, save_checkpoint
    from reidkit.models import build_model
    torch.manual_seed(0)
    arch = "transreid/vit_tiny_patch16_224"
    model = build_model(arch, 5, pretrained=None, img_size=(64, 32), sie_cameras=3)
    with torch.no_grad():
        model.sie.normal_(0, 0.5)
    spec = EmbeddingSpec(arch, {"img_size": [64, 32], "sie_cameras": 3}, (64, 32))
    save_checkpoint({"state_dict": model.state_dict(), "embedding": spec.as_dict()}, tmp_path / "sie.pth")
    folder = tmp_path / "crops"
    folder.mkdir()
    names = ["0001_c1s1_000001_01.png", "0001_c3s1_000002_01.png", "0002_c2s1_000003_01.png"]
    for i, name in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(folder / name)
    gallery = tmp_path / "g.npz"
    assert main(["extract", str(folder), "--weights", str(tmp_path / "sie.pth"), "--out", str(gallery),
                 "--device", "cpu", "--no-progress", "--sie-cameras", "market1501"]) == 0
    with served_page(gallery, metadata="market1501") as driver:
        wait = WebDriverWait(driver, 30)
        wait.until(EC.visibility_of_element_located((By.ID, "cameraindex")))
        driver.find_element(By.ID, "file").send_keys(str(folder / names[1]))
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "camera_index"))
        driver.find_element(By.ID, "cameraindex").send_keys("2")           # c3: index 2, as the gallery's
        driver.find_element(By.ID, "again").click()
        wait.until(lambda d: len(results(d)) == 3)
        assert results(driver)[0].get_attribute("aria-label").startswith("rank 1, distance 0.000")
        assert "camera 3" in results(driver)[0].text


def test_a_persons_crops_are_found_selected_and_deleted_with_a_confirmation(tiny_run, tiny_data, tmp_path):
    """Issue 49 D: search -> tick results -> delete -> confirm; a dismissed confirmation deletes nothing; the
    deleted items are gone from the next search and from the store."""
    from reidkit.deploy.store import GalleryStore
    gallery = tmp_path / "gallery.db"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(gallery), "--no-progress", "--device", "cpu", "--metadata", "market1501"]) == 0
    before = len(GalleryStore(gallery))
    with served_page(gallery, metadata="market1501") as driver:
        wait = WebDriverWait(driver, 30)
        wait.until(EC.visibility_of_element_located((By.ID, "erasebar")))
        driver.find_element(By.ID, "file").send_keys(str(sorted((tiny_data / "query").glob("*.jpg"))[0]))
        wait.until(lambda d: len(results(d)) > 2)
        picks = driver.find_elements(By.CSS_SELECTOR, "#results .pick")
        chosen = [picks[0].get_attribute("value"), picks[1].get_attribute("value")]
        picks[0].click()
        picks[1].click()
        assert driver.find_element(By.ID, "erase").text == "delete 2 selected"
        driver.find_element(By.ID, "erase").click()
        wait.until(EC.alert_is_present())
        assert "cannot be undone" in driver.switch_to.alert.text
        driver.switch_to.alert.dismiss()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "nothing deleted"))
        assert len(GalleryStore(gallery)) == before
        driver.find_element(By.ID, "erase").click()
        wait.until(EC.alert_is_present())
        driver.switch_to.alert.accept()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "deleted 2"))
        driver.find_element(By.ID, "again").click()
        wait.until(lambda d: results(d) and "matches in" in d.find_element(By.ID, "status").text)
        shown = [r.get_attribute("data-id") for r in results(driver)]
        assert not set(chosen) & set(shown)
    store = GalleryStore(gallery)
    assert len(store) == before - 2 and all(store.item_info(int(i)) is None for i in chosen)
