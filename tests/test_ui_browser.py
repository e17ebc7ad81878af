"""The Dagster UI in a real browser, as a person uses it after `make ui`.

`dagster dev` serves the code location on 127.0.0.1 with its own DAGSTER_HOME, MEL_HOME and a tiny MIMIC
dataset (MEL_DATASET_DIR). Headless Chromium (Debian's `chromium` package, driven by Playwright through
`executable_path`: Playwright's own browser download is never used) opens the asset catalog, checks that
every asset of `assets.definitions.defs` is listed, then clicks "Materialize all" on the ingest group and
waits, through the server's GraphQL API, for that run to succeed.

Screenshots land in the test's tmp_path and are copied to $MEL_TEST_ARTIFACTS, or to `.artifacts/ui/` in
the repository when it is unset. Without Chromium or Playwright the test fails under CI=true and skips
elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from assets.definitions import defs
from pipeline.lake import Lake
from tests.conftest import MimicDataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHROMIUM = os.environ.get("MEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
INGEST_ASSETS = {"mentions", "entities", "quarantine"}
SERVER_START_S = 180  # code server + webserver + daemon on a busy 2-core machine
RUN_S = 300  # the ingest run: a process per step, each importing torch
PAGE_S = 60


def needs(what: str, hint: str) -> None:
    """A missing browser is a broken CI machine but only an unfinished set-up on a laptop."""
    message = f"{what} is missing: {hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def sync_playwright():
    if not Path(CHROMIUM).is_file():
        needs(f"Chromium ({CHROMIUM})", "apt-get install chromium (`.ci/run` does it), or set MEL_CHROMIUM.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        needs("Playwright", "pip install -e '.[test]' (do not run `playwright install`: Debian's chromium is used).")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


class Server:
    """`dagster dev` in its own process group, so that one signal stops it and every child it started."""

    def __init__(self, root: Path, env: dict):
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = root / "dagster-dev.log"
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                   "-h", HOST, "-p", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.location_loaded():
                return
            time.sleep(1)
        raise AssertionError(f"dagster dev did not serve the code location within {SERVER_START_S} s:\n"
                             f"{self.log_tail()}")

    def location_loaded(self) -> bool:
        try:
            data = graphql(self.base, "{ workspaceOrError { ... on Workspace { locationEntries { "
                                      "loadStatus locationOrLoadError { __typename } } } } }")
        except OSError:  # not listening yet
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        if any(entry["locationOrLoadError"] and entry["locationOrLoadError"]["__typename"] == "PythonError"
               for entry in entries):
            raise AssertionError(f"The code location failed to load:\n{self.log_tail()}")
        return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # dagster dev shuts its webserver, daemon and code server
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def runs(self) -> list[dict]:
        data = graphql(self.base, "{ runsOrError { ... on Runs { results { "
                                  "runId status assetSelection { path } } } } }")
        return data["runsOrError"]["results"]

    def wait_for_run(self, assets: set[str]) -> dict:
        """The run that materializes exactly `assets`, once it has finished."""
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            for run in self.runs():
                if {"/".join(key["path"]) for key in run["assetSelection"] or []} == assets and run["status"] in (
                        "SUCCESS", "FAILURE", "CANCELED"):
                    return run
            time.sleep(2)
        raise AssertionError(f"No finished run of {sorted(assets)} within {RUN_S} s; runs: {self.runs()}\n"
                             f"{self.log_tail()}")


@pytest.fixture
def server(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEL_HOME": str(tmp_path / "mel"),
           "MEL_DATASET_DIR": str(MimicDataset(tmp_path / "dataset").write())}
    # The dataset sensor starts RUNNING by default and would launch the whole chain (LLM, CLIP, training)
    # on its first tick; this test is about the run a person starts, so the sensor is stopped beforehand.
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "sensor", "stop", "dataset_change_sensor",
                    "-w", "workspace.yaml"], cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    running = Server(tmp_path, env)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def artifacts(tmp_path):
    """Screenshots go to tmp_path; afterwards they are copied where a person (or CI) can find them."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    yield shots
    keep = Path(os.environ.get("MEL_TEST_ARTIFACTS") or REPO / ".artifacts" / "ui")
    keep.mkdir(parents=True, exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy2(shot, keep / shot.name)


def dismiss_welcome_dialog(page) -> None:
    """A fresh instance greets with a 'Join the Dagster community' dialog that covers the page."""
    from playwright.sync_api import TimeoutError as NoDialog

    try:
        page.get_by_role("button", name="Skip").click(timeout=5_000)
    except NoDialog:  # not shown (again) on this page
        pass


def test_the_catalog_lists_every_asset_and_ingest_materializes_from_the_ui(
        sync_playwright, server, artifacts, tmp_path):  # the browser first: no server when it is missing
    asset_keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.set_default_timeout(PAGE_S * 1000)

            page.goto(f"{server.base}/assets")
            dismiss_welcome_dialog(page)
            for key in sorted(asset_keys):
                page.get_by_text(key, exact=True).first.wait_for(state="visible")
            page.screenshot(path=artifacts / "asset_catalog.png", full_page=True)

            page.goto(f"{server.base}/locations/assets.definitions/asset-groups/ingest")
            dismiss_welcome_dialog(page)
            page.get_by_role("button", name="Materialize all").click()
            page.get_by_text("Launched run").wait_for(state="visible")
            run = server.wait_for_run(INGEST_ASSETS)
            assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']}:\n{server.log_tail()}"

            page.goto(f"{server.base}/locations/assets.definitions/asset-groups/ingest")
            dismiss_welcome_dialog(page)
            page.get_by_text("Never materialized").first.wait_for(state="detached")  # statuses refreshed
            page.screenshot(path=artifacts / "ingest_materialized.png")
        finally:
            browser.close()

    assert Lake(tmp_path / "mel").read_table("mentions").num_rows == 3  # the run read MEL_DATASET_DIR into MEL_HOME
