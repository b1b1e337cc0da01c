"""Real-browser fixtures: one JupyterLab server and one Debian chromium (via Playwright) per test session.

Facts behind the choices (measured, see /work/shared/notes/frontend.md): the server needs ``--allow-root`` as
root and isolated config/runtime/settings/workspaces dirs; "kernel idle" in the DOM shows up before the kernel is
connected, so readiness is read from ``window.jupyterapp``; ``playwright install`` cannot run here, so chromium is
Debian's ``/usr/bin/chromium``; headless chromium needs a software GL (SwiftShader) for WebGL.
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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("LW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # WebGL in headless chromium >= 144 needs SwiftShader explicitly
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
]


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    browser_items = [it for it in items if here in Path(str(it.path)).parents]
    for it in browser_items:
        it.add_marker(pytest.mark.browser)
    # In CI the browser tests must run (scripts/setup.sh --test installs chromium): a missing chromium fails there.
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing (install Debian's chromium: "
                                       "bash scripts/setup.sh --test); set CI=1 to fail instead of skipping")
        for it in browser_items:
            it.add_marker(skip)


def _sigterm_to_exit(signum, frame):
    # `timeout` and CI cancellation send SIGTERM; turning it into SystemExit runs the fixtures' finalizers, so
    # the Lab server and its kernels are not orphaned
    sys.exit(128 + signum)


@pytest.fixture(scope="session", autouse=True)
def _sigterm_safe():
    previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
    yield
    signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _write_settings(settings: Path):
    files = {
        # no "Would you like to get notified about official Jupyter news?" toast over the notebook
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
        # a test must not rewrite the notebooks it opens
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        # "save widget state": a notebook saved by a test keeps its widgets (the saved-notebook size test)
        "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
    }
    for name, content in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


class LabServer:
    """A JupyterLab (or Notebook 7: ``app="notebook"``) server on 127.0.0.1 serving a temp copy of ``notebooks/``
    (the repo's files stay untouched)."""

    def __init__(self, base: Path, app="jupyterlab"):
        self.app = app
        self.base = base
        self.root = base / "root"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "lab.log"
        self.proc = None

    def start(self, timeout=90):
        self.root.mkdir(parents=True)
        if NOTEBOOKS.is_dir():
            for nb in NOTEBOOKS.glob("*.ipynb"):
                shutil.copy(nb, self.root / nb.name)
        dirs = {k: self.base / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR",
                                                    "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}
        for d in dirs.values():
            d.mkdir(parents=True)
        _write_settings(dirs["JUPYTERLAB_SETTINGS_DIR"])
        env = dict(os.environ, **{k: str(v) for k, v in dirs.items()})
        # the kernel inherits this: the checkout's package is importable even without `pip install -e .`
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        expose = "--LabApp.expose_app_in_browser=True" if self.app == "jupyterlab" else \
            "--JupyterNotebookApp.expose_app_in_browser=True"
        cmd = [sys.executable, "-m", self.app, "--no-browser", f"--port={self.port}", "--port-retries=0",
               "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.root_dir={self.root}", expose, "--allow-root", "--ServerApp.open_browser=False"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:  # the clean way also shuts the kernels down
            req = urllib.request.Request(f"{self.url}/api/shutdown", method="POST", data=b"")
            urllib.request.urlopen(req, timeout=5).close()
            self.proc.wait(timeout=10)
        except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("lab"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("nb7"), app="notebook")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing and CI is set: run `bash scripts/setup.sh --test` (apt chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Recorder:
    """Every request the page makes, and every uncaught page error."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))

    def external(self, allowed_prefixes=()) -> list[str]:
        """Requests that are neither local to the page (file:, blob:, data:) nor to an allowed origin."""
        ok = ("file:", "blob:", "data:", "about:") + tuple(allowed_prefixes)
        return [u for u in self.requests if not u.startswith(ok)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.lw_failed = report.failed
    return report


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.recorder = Recorder(pg)
    failed_png = ARTIFACTS / f"FAILED-{request.node.name}.png"
    failed_png.unlink(missing_ok=True)  # from an earlier run
    try:
        yield pg
    finally:
        if getattr(request.node, "lw_failed", False):  # what the page showed when the test failed
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                pg.screenshot(path=str(failed_png))
            except Exception:
                pass
        context.close()


def small_surface_cell(title: str) -> str:
    """A code cell with a fast surface widget (untrained digits MLP, 256 samples, 9 x 9) named ``surface``."""
    return f"""import torch
import landscape_widgets as lw
from landscape_widgets import examples
x, y = examples.digits()
ls = lw.Landscape(examples.digits_mlp(seed=0), torch.nn.CrossEntropyLoss(), (x[:256], y[:256]), device="cpu")
surface = lw.SurfaceWidget(ls, resolution=9, span=1.0, title={title!r})
surface"""


# -- JupyterLab helpers -----------------------------------------------------------------------------------------
_KERNEL_READY_JS = """async () => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  if (!nb || !nb.sessionContext) return "no notebook";
  window.__lwNotebook = nb;  // the notebook under test, even when another panel (an output view) is current
  await nb.context.ready;
  await nb.sessionContext.ready;
  const deadline = Date.now() + 90000;
  while (Date.now() < deadline) {
    const sc = nb.sessionContext, k = sc.session && sc.session.kernel;
    if (k && k.connectionStatus === "connected" && k.status === "idle" && !sc.hasNoKernel) return "ready";
    await new Promise(r => setTimeout(r, 100));
  }
  return "timeout";
}"""


def open_notebook(page, lab, name, *, timeout=90_000):
    """Open ``name`` in Lab (or Notebook 7) and wait until its kernel is connected and idle (the only reliable
    signal)."""
    # ?reset: a fresh workspace, so notebooks of earlier tests are not reopened (each would start a kernel)
    url = f"{lab.url}/lab/tree/{name}?reset" if lab.app == "jupyterlab" else f"{lab.url}/notebooks/{name}"
    page.goto(url, timeout=timeout)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=timeout)
    state = page.evaluate(_KERNEL_READY_JS)
    assert state == "ready", f"kernel not ready: {state}\n{lab.log()}"


def run_all(page):
    # not awaited: the promise resolves only when every cell has finished
    page.evaluate("() => { window.jupyterapp.shell.activateById(window.__lwNotebook.id); "
                  "window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def wait_idle_after_run(page, timeout=240_000):
    """Wait until every code cell has an execution count and the kernel is idle again."""
    page.wait_for_function("""() => {
      const nb = window.__lwNotebook;
      const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
      const cells = nb.content.widgets.filter(c => c.model.type === 'code');
      return k && k.status === 'idle' && cells.every(c => c.model.executionCount !== null);
    }""", timeout=timeout)


def cell_errors(page) -> list[str]:
    """Tracebacks shown in the notebook's outputs."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
        + '.jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]'
      )).map(e => e.innerText).filter(t => /Error|Traceback/.test(t))""")


def kernel_print(page, code: str, timeout=60_000) -> str:
    """Run ``code`` in the notebook's kernel (outside the notebook) and return what it printed to stdout.

    Reads the kernel's state directly, so a test can compare what the plot shows with what the kernel holds.
    """
    return page.evaluate("""async ([code, timeout]) => {
      const k = window.__lwNotebook.sessionContext.session.kernel;
      let out = "";
      const future = k.requestExecute({ code, silent: false, store_history: false });
      future.onIOPub = (msg) => {
        if (msg.header.msg_type === "stream" && msg.content.name === "stdout") out += msg.content.text;
        if (msg.header.msg_type === "error") out += "ERROR " + msg.content.ename + ": " + msg.content.evalue;
      };
      const late = new Promise((_, rej) => setTimeout(() => rej(new Error("kernel timeout")), timeout));
      await Promise.race([future.done, late]);
      return out;
    }""", [code, timeout])


def close_notebook(page):
    """Shut the notebook's kernel down (the server lives for the whole session; idle kernels cost CPU)."""
    try:
        page.evaluate("""async () => {
          const nb = window.__lwNotebook;
          if (nb && nb.sessionContext) await nb.sessionContext.shutdown();
        }""")
    except Exception:  # the page may already be gone; the server's shutdown stops the kernel anyway
        pass
