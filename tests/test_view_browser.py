"""`cloudclear view` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by selenium against the server in a thread. The page loads with no console errors, the timeline
changes the input image, the swipe moves, a run from the form finishes and its output shows.
Screenshots are saved under each test's tmp_path; with CLOUDCLEAR_DOCS_SCREENSHOT=1 the sample
tiles' one is also copied to docs/img/view.png. Skipped with a reason where Chromium, chromedriver
or selenium are missing."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloudclear.catalog import Catalog, build_index
from cloudclear.inference.jobs import MethodSpec, plan_tasks, run_tasks
from cloudclear.inference.pipeline import InferOptions
from cloudclear.synth import generate_series

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_tiles" / "32TPS"
DOCS_IMG = REPO / "docs" / "img" / "view.png"
WAIT_S = 60  # an upper bound for the page to settle, never a timing assertion
RUN_WAIT_S = 300

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(
        "Chromium or chromedriver missing: no /usr/bin/chromium or /usr/bin/chromedriver"
        " (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from cloudclear.view.server import make_server  # noqa: E402


def _infer(catalog: Path, date: str, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)  # a folder: the output takes the name the server's runs use
    tasks = plan_tasks(Catalog.open(catalog), [date], "gapfill", dst)
    assert run_tasks(catalog, tasks, MethodSpec("gapfill"), InferOptions(), scheduler="serial").ok


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """96 x 96 px, 4 S2 dates (one clear, one overcast, two part cloudy), a gapfill output on the
    cloudier part-cloudy date: (catalog, output folder, dates in order, output date)."""
    root = tmp_path_factory.mktemp("view_synth")
    generate_series(root / "T31UFQ", height=96, width=96, n_dates=4, tile="31UFQ", seed=0, s1=False)
    catalog = build_index(root, root / "cat.gpkg", detect=None).catalog_path
    scenes = sorted((s for s in Catalog.open(catalog) if s.sensor == "S2"), key=lambda s: s.datetime)
    dates = [s.datetime.date().isoformat() for s in scenes]
    part = [s for s in scenes if s.cloud_pct is not None and 1.0 < s.cloud_pct < 95.0]
    cloudy = max(part, key=lambda s: s.cloud_pct or 0.0).datetime.date().isoformat()
    out = root / "out"
    _infer(catalog, cloudy, out)
    # the series' cloud-free truth of that date beside the output: the page shows its scores
    (truth,) = (root / "T31UFQ" / "truth").glob(f"S2_T31UFQ_{cloudy.replace('-', '')}T*_truth.tif")
    shutil.copyfile(truth, out / truth.name)
    return catalog, out, dates, cloudy  # type: ignore[return-value]


@contextmanager
def _serve(paths: list[Path]) -> Iterator[str]:
    server = make_server(paths, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def url(synth) -> Iterator[str]:
    catalog, out, _, _ = synth
    with _serve([out, catalog]) as u:
        yield u


@pytest.fixture
def driver() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,900", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv: Any, cond: Any, timeout: float = WAIT_S) -> Any:
    return WebDriverWait(drv, timeout, poll_frequency=0.2).until(cond)


def _loaded(drv: Any, css: str) -> bool:
    """The image under ``css`` shows a loaded, non-empty picture."""
    return bool(
        drv.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return !!i && !i.hidden && i.complete && i.naturalWidth > 0 && !!i.getAttribute('src');",
            css,
        )
    )


def _open(drv: Any, url: str) -> None:
    drv.get(url)
    _wait(drv, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for css in ("#panel-input img", "#panel-mask img", "#panel-output img"):
        _wait(drv, lambda d, css=css: _loaded(d, css))


def _errors(drv: Any) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _shot(drv: Any, path: Path) -> Path:
    assert drv.save_screenshot(str(path)), path
    assert path.stat().st_size > 1000
    return path


def test_page_loads_with_no_console_errors(driver, url, synth, tmp_path):
    _, _, dates, cloudy = synth
    _open(driver, url)
    bars = driver.find_elements(By.CSS_SELECTOR, "#timeline .date-bar")
    assert [b.get_attribute("data-date") for b in bars] == dates
    selected = driver.find_element(By.CSS_SELECTOR, "#timeline .date-bar.selected")
    assert selected.get_attribute("data-date") == cloudy  # the date with an output opens first
    assert "has-output" in selected.get_attribute("class")
    src = driver.find_element(By.CSS_SELECTOR, "#panel-input img").get_attribute("src")
    assert "kind=scene" in src and "token=" in src and "bbox=" in src
    assert "kind=output" in driver.find_element(By.CSS_SELECTOR, "#panel-output img").get_attribute("src")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#map polygon")) == 1
    _wait(driver, lambda d: "PSNR" in d.find_element(By.ID, "scores").text)  # against the copied truth
    methods = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "run-method")).options]
    assert "gapfill" in methods
    _shot(driver, tmp_path / "view_loaded.png")
    assert _errors(driver) == []


def test_page_without_token_is_refused(driver, url):
    driver.get(url.split("?")[0])
    assert "token" in driver.find_element(By.TAG_NAME, "body").text


def test_timeline_changes_the_input_image(driver, url, synth, tmp_path):
    _, _, dates, cloudy = synth
    _open(driver, url)
    before = driver.find_element(By.CSS_SELECTOR, "#panel-input img").get_attribute("src")
    other = next(d for d in dates if d != cloudy)
    driver.find_element(By.CSS_SELECTOR, f'#timeline .date-bar[data-date="{other}"]').click()
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#panel-input img").get_attribute("src") != before)
    _wait(driver, lambda d: _loaded(d, "#panel-input img"))
    assert driver.find_element(By.CSS_SELECTOR, "#timeline .date-bar.selected").get_attribute("data-date") == other
    assert other in driver.find_element(By.ID, "selected-date").text
    _shot(driver, tmp_path / "view_other_date.png")
    assert _errors(driver) == []


def test_zoom_requests_a_smaller_bbox(driver, url):
    _open(driver, url)
    img = "#panel-input img"
    before = driver.find_element(By.CSS_SELECTOR, img).get_attribute("src")
    driver.execute_script(
        "const v = document.querySelector('#panel-input .view'); const r = v.getBoundingClientRect();"
        "for (let k = 0; k < 3; k++) v.dispatchEvent(new WheelEvent('wheel', {deltaY: -200, bubbles: true,"
        " cancelable: true, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2}));"
    )
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, img).get_attribute("src") != before)
    # the three panels stay in sync: every panel asks for the same bbox
    srcs = [driver.find_element(By.CSS_SELECTOR, f"#panel-{p} img").get_attribute("src") for p in ("input", "mask")]
    _wait(
        driver,
        lambda d: _bbox(d.find_element(By.CSS_SELECTOR, "#panel-mask img").get_attribute("src")) == _bbox(srcs[0]),
    )
    assert _width(_bbox(srcs[0])) < _width(_bbox(before))
    assert _errors(driver) == []


def _bbox(src: str) -> list[float]:
    from urllib.parse import parse_qs, urlsplit

    return [float(v) for v in parse_qs(urlsplit(src).query)["bbox"][0].split(",")]


def _width(b: list[float]) -> float:
    return b[2] - b[0]


def test_swipe_moves(driver, url, tmp_path):
    _open(driver, url)
    driver.find_element(By.ID, "compare-toggle").click()
    _wait(driver, lambda d: _loaded(d, "#panel-compare .swipe-clip img"))
    _wait(driver, lambda d: _loaded(d, "#panel-compare .view > img"))
    # input and reconstruction lie on one another: same place, same size on screen
    boxes = driver.execute_script(
        "return ['#panel-compare .view > img', '#panel-compare .swipe-clip img'].map((c) => {"
        " const r = document.querySelector(c).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; });"
    )
    assert boxes[0] == pytest.approx(boxes[1], abs=1.0)
    overlay = driver.find_element(By.ID, "swipe-overlay")
    before = overlay.value_of_css_property("width")
    assert overlay.get_attribute("style").find("50%") >= 0
    swipe = driver.find_element(By.ID, "swipe")
    for _ in range(10):
        swipe.send_keys(Keys.ARROW_LEFT)
    assert swipe.get_attribute("value") == "40"
    assert "40%" in overlay.get_attribute("style")
    assert overlay.value_of_css_property("width") != before
    _shot(driver, tmp_path / "view_swipe.png")
    assert _errors(driver) == []


def test_bands_and_status_layer(driver, url, tmp_path):
    _open(driver, url)
    img = "#panel-input img"
    Select(driver.find_element(By.ID, "bands")).select_by_value("false")
    _wait(driver, lambda d: "bands=false" in d.find_element(By.CSS_SELECTOR, img).get_attribute("src"))
    driver.find_element(By.ID, "status-toggle").click()
    status = "#panel-output img[alt=status]"
    _wait(driver, lambda d: _loaded(d, status))
    assert "kind=status" in driver.find_element(By.CSS_SELECTOR, status).get_attribute("src")
    _shot(driver, tmp_path / "view_false_colour_status.png")
    assert _errors(driver) == []


def test_run_from_the_form_shows_its_output(driver, url, synth, tmp_path):
    _, out, dates, cloudy = synth
    _open(driver, url)
    target = next(d for d in dates if d != cloudy and not list(out.glob(f"*{d.replace('-', '')}*")))
    driver.find_element(By.CSS_SELECTOR, f'#timeline .date-bar[data-date="{target}"]').click()
    _wait(driver, lambda d: d.find_element(By.ID, "run-date").get_attribute("value") == target)
    _wait(driver, lambda d: "no reconstruction" in d.find_element(By.ID, "panel-output").text)
    Select(driver.find_element(By.ID, "run-method")).select_by_value("gapfill")
    driver.find_element(By.ID, "run-button").click()
    status = driver.find_element(By.ID, "run-status")
    _wait(driver, lambda d: status.get_attribute("data-state") in ("done", "failed"), RUN_WAIT_S)
    assert status.get_attribute("data-state") == "done", status.text
    _wait(driver, lambda d: _loaded(d, "#panel-output img"))
    src = driver.find_element(By.CSS_SELECTOR, "#panel-output img").get_attribute("src")
    assert "kind=output" in src
    name = f"S2_T31UFQ_{target.replace('-', '')}_gapfill.tif"
    assert (out / name).is_file()
    assert name in Select(driver.find_element(By.ID, "output-select")).first_selected_option.text
    bar = driver.find_element(By.CSS_SELECTOR, f'#timeline .date-bar[data-date="{target}"]')
    assert "has-output" in bar.get_attribute("class")
    _wait(driver, lambda d: d.find_element(By.ID, "scores").text == "no reference")
    _shot(driver, tmp_path / "view_after_run.png")
    assert _errors(driver) == []


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    """The real sample tiles indexed, a gapfill output for the cloudy 2022-06-17."""
    if not SAMPLE.is_dir():
        pytest.skip("sample_tiles/32TPS is not present")
    root = tmp_path_factory.mktemp("view_sample")
    catalog = build_index(SAMPLE, root / "sample.gpkg").catalog_path
    out = root / "out"
    _infer(catalog, "2022-06-17", out)
    return catalog, out


def test_sample_tiles_screenshot(driver, sample, tmp_path):
    catalog, out = sample
    with _serve([out, catalog]) as url:
        _open(driver, url)
        assert (
            driver.find_element(By.CSS_SELECTOR, "#timeline .date-bar.selected").get_attribute("data-date")
            == "2022-06-17"
        )
        Select(driver.find_element(By.ID, "run-method")).select_by_value("gapfill")
        shot = _shot(driver, tmp_path / "view_sample_tiles.png")
        driver.find_element(By.ID, "compare-toggle").click()
        _wait(driver, lambda d: _loaded(d, "#panel-compare .swipe-clip img"))
        compare = _shot(driver, tmp_path / "view_sample_tiles_compare.png")
        # another method from the form: the shipped network; its output appears beside gapfill's
        driver.find_element(By.ID, "compare-toggle").click()
        before = driver.find_element(By.CSS_SELECTOR, "#panel-output img").get_attribute("src")
        Select(driver.find_element(By.ID, "run-method")).select_by_value("refine-small")
        driver.find_element(By.ID, "run-button").click()
        status = driver.find_element(By.ID, "run-status")
        _wait(driver, lambda d: status.get_attribute("data-state") in ("done", "failed"), RUN_WAIT_S)
        assert status.get_attribute("data-state") == "done", status.text
        _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#panel-output img").get_attribute("src") != before)
        chosen = Select(driver.find_element(By.ID, "output-select")).first_selected_option.text
        assert "S2_T32TPS_20220617_refine-small.tif" in chosen
        _wait(driver, lambda d: _loaded(d, "#panel-output img"))
        assert (out / "S2_T32TPS_20220617_refine-small.tif").is_file()
        _shot(driver, tmp_path / "view_sample_tiles_refine.png")
        assert _errors(driver) == []
    if os.environ.get("CLOUDCLEAR_DOCS_SCREENSHOT") == "1":
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG)
        shutil.copyfile(compare, DOCS_IMG.with_name("view_compare.png"))
