"""report.html in a real browser: Debian's headless Chromium driven by Selenium (chromedriver), on reports
built from real outputs (SmolLM2 and its perturbed copy). Chromium and chromedriver come from
`scripts/install-browser`, which `scripts/run-tests` runs first (as a clean CI machine would).

The slow test runs both checkpoints for real (conversion, perturbation, registration, server, harness)
through the snakemake CLI, then extracts items, compares and renders."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.report import compare

from conftest import SHARED_BENCHMARKS, copy_workflow, snakemake
from test_report import MODELS, inputs, make_workdir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1280,2000")  # fmt: skip
pytestmark = pytest.mark.browser
MODEL_COLOURS = ((0x00, 0x72, 0xB2), (0xE6, 0x9F, 0x00))  # charts.PALETTE[:2]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium with its own profile folder; its console log is collected."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("no chromium/chromedriver: run scripts/install-browser (as root) first; scripts/run-tests does")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def png_size_and_colours(path: Path) -> tuple[tuple[int, int], set[tuple[int, int, int]]]:
    """Width, height and the set of RGB colours of an 8-bit RGB/RGBA PNG (Chromium's screenshots)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours = bytearray(stride), set()
    for row in range(height):
        f, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(tuple(line[i : i + 3]) for i in range(0, stride, bpp))
        prev = line
    return (width, height), colours


def check_page(driver: Any, html: Path, report: dict[str, Any], shot: Path, colours: int = 2) -> None:
    """Load the page; no console errors; every expected mark drawn with a size; screenshot with the charts'
    colours; the links open the run's files."""
    from selenium.webdriver.common.by import By

    driver.get(html.as_uri())
    assert driver.title.startswith("Checkpoint comparison")
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []

    n_bars = sum(1 for t in report["tasks"] for m in t["metrics"] for s in m["scores"] if s["value"] is not None)
    n_whiskers = sum(1 for t in report["tasks"] for m in t["metrics"] for s in m["scores"] if s["ci_low"] is not None)
    n_points = sum(1 for t in report["tasks"] for m in t["metrics"] for p in m["pairs"] if p["n_common"])
    n_cis = sum(1 for t in report["tasks"] for m in t["metrics"] for p in m["pairs"] if p["ci_low"] is not None)
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-scores")) == len(report["tasks"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-deltas")) == len(report["tasks"])
    bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart-scores rect.bar")
    points = driver.find_elements(By.CSS_SELECTOR, "svg.chart-deltas circle.delta")
    assert len(bars) == n_bars and len(points) == n_points
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-scores line.errorbar")) == n_whiskers
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-deltas line.delta-ci")) == n_cis
    boxes = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart rect.bar, svg.chart circle.delta'))"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; })"
    )
    assert all(w > 0 and h > 0 for w, h in boxes)
    # each bar's height is its score: 180 px for 1.0 (the chart's scale), as drawn by the browser
    for bar in bars:
        score = next(s["value"] for t in report["tasks"] if t["task"] == bar.find_element(By.XPATH, "..").get_attribute("data-task")
                     for m in t["metrics"] if m["metric"] == bar.get_attribute("data-metric")
                     for s in m["scores"] if s["model"] == bar.get_attribute("data-model"))  # fmt: skip
        assert bar.rect["height"] == pytest.approx(max(180 * score, 0.5), abs=1.0)

    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 16000))
    assert driver.save_screenshot(str(shot))
    (w, h), painted = png_size_and_colours(shot)
    assert w >= 1000 and h > 1000
    assert set(MODEL_COLOURS[:colours]) <= painted  # every model's bar colour was painted

    link = driver.find_element(By.LINK_TEXT, "result")
    link.click()
    body = driver.find_element(By.TAG_NAME, "body").text
    assert json.loads(body)["task"] == report["tasks"][0]["task"]


def test_report_renders_in_chromium(tmp_path: Path, browser: Any) -> None:
    work = make_workdir(tmp_path)
    report = compare(*inputs(work), work / "reports" / "smollm2", workdir=work)
    assert any(p["n_common"] for t in report["tasks"] for m in t["metrics"] for p in m["pairs"])
    check_page(browser, work / "reports" / "smollm2" / "report.html", report, tmp_path / "report.png")
    print(f"screenshot: {tmp_path / 'report.png'}")


def test_one_model_report_renders(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    work = make_workdir(tmp_path, models=MODELS[:1])
    report = compare(*inputs(work, models=MODELS[:1]), work / "r", workdir=work)
    check_page(browser, work / "r" / "report.html", report, tmp_path / "one.png", colours=1)
    browser.back()
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart-deltas circle.delta") == []
    assert "one model only: nothing to compare" in browser.find_element(By.CSS_SELECTOR, "svg.chart-deltas").text


MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
LIMIT = 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=20"]'


@pytest.mark.slow
def test_two_real_checkpoints_end_to_end(tmp_path: Path, browser: Any) -> None:
    """SmolLM2 and its perturbed copy (the embedded smollm2-noisy: seed 1, scale 0.1), both evaluated on OpenBookQA
    (20 items) by the pipeline's own report target (server + harness + items + report), checked in the browser;
    then the W&B export of one of them logs the comparison (offline: no W&B server here)."""
    if not (MIRROR / "SOURCES.md").is_file():
        pytest.fail(f"no benchmark mirror at {MIRROR}: set NEMOTRON_DATA_MIRROR")
    work = copy_workflow(tmp_path)
    env = {"NEMOTRON_DATA_MIRROR": str(MIRROR), "WANDB_MODE": "offline"}
    compare_two = 'compare=["smollm2:latest","smollm2-noisy:latest"]'
    proc = snakemake(work, "results/report.html", "--config", compare_two, 'tasks=["openbookqa"]', LIMIT, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((work / "results" / "report.json").read_text())
    assert [m["spec"] for m in report["models"]] == ["smollm2:latest", "smollm2-noisy:latest"]
    assert (work / "results" / "report.csv").is_file()
    (sec,) = report["tasks"]
    assert sec["same_samples"] is True
    pair = sec["metrics"][0]["pairs"][0]
    assert pair["n_common"] == 20 and pair["gains"] + pair["losses"] > 0, pair
    check_page(browser, work / "results" / "report.html", report, tmp_path / "e2e.png")
    export = ('overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=20",'
              '"execution.auto_export.destinations=[wandb]","export.wandb.entity=team","export.wandb.project=evals"]')
    proc = snakemake(work, "--config", export, 'tasks=["openbookqa"]', "--", "results/smollm2_latest/wandb.json", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "evaluate_task" not in proc.stdout + proc.stderr
    receipt = json.loads((work / "results" / "smollm2_latest" / "wandb.json").read_text())
    assert receipt["comparison"]["deltas"] >= 1 and receipt["comparison"]["keys"]["table"] == "comparison/table"
    # Snakemake's own report carries the page (a report() output with its caption)
    proc = snakemake(work, "--report", "snakemake-report.zip", "results/report.html", "--config", compare_two,
                     'tasks=["openbookqa"]', LIMIT, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    import zipfile

    archive = zipfile.ZipFile(work / "snakemake-report.zip")
    page = (work / "results" / "report.html").read_bytes()
    assert any(n.startswith("snakemake-report/data/raw/") and archive.read(n) == page for n in archive.namelist())
