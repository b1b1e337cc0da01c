"""Offline HTML snapshots of live widgets: one self-contained file, opened from disk, zero network requests.

The page carries the widget bundle as a JSON string, imported through a blob: URL (as anywidget itself loads
modules), and each widget's state as JSON with binary arrays in base64.  A 20-line stand-in for the anywidget
model (get / set / on / off / save_changes) renders the same views as in JupyterLab; controls that need the
kernel are disabled by the views.  A Content-Security-Policy of ``default-src 'none'`` makes the browser refuse any
request the page might still try.  Every string is escaped for its context: HTML text through ``html.escape``,
JSON inside ``<script>`` with ``<``, ``>`` and ``&`` as ``\\u003c``-style escapes, so a ``</script>`` in a title stays
text.
"""
from __future__ import annotations

import base64
import html
import json
import os
import pathlib

BUNDLE = pathlib.Path(__file__).resolve().parent / "static" / "widget.js"
STUB = BUNDLE.with_name("stub.js")  # each widget's _esm in Jupyter: loads BUNDLE from the shared Bundle widget

CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval' blob:; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:; connect-src 'none'")

_LOADER = """
const bundle = JSON.parse(document.getElementById("lw-bundle").textContent);
const url = URL.createObjectURL(new Blob([bundle], { type: "text/javascript" }));
function fakeModel(state) {
  const handlers = {};
  const emit = (ev) => (handlers[ev] || []).slice().forEach((fn) => fn());
  return {
    get: (key) => state[key],
    set: (key, value) => { state[key] = value; emit("change:" + key); emit("change"); },
    on: (ev, fn) => { (handlers[ev] = handlers[ev] || []).push(fn); },
    off: (ev, fn) => { if (!ev) { for (const k in handlers) delete handlers[k]; return; }
                       handlers[ev] = (handlers[ev] || []).filter((f) => fn && f !== fn); },
    save_changes: () => {},   // no kernel: kernel-only controls are disabled by the view
    send: () => {},
  };
}
try {
  const mod = await import(url);
  for (const node of document.querySelectorAll("script[data-lw-state]")) {
    const host = document.getElementById(node.dataset.lwState);
    const state = mod.reviveBuffers(JSON.parse(node.textContent));
    const model = fakeModel(state);
    try {
      await mod.default.render({ model, el: host });
    } catch (err) {
      host.textContent = "landscape_widgets: could not render this widget: " + err;
    }
  }
} catch (err) {
  document.body.insertAdjacentText("beforeend", "landscape_widgets: could not load the bundle: " + err);
} finally {
  URL.revokeObjectURL(url);
}
"""

_STYLE = """
html { color-scheme: light dark; }
body { margin: 0; padding: 24px; background: #fff; color: #212121;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
@media (prefers-color-scheme: dark) { body { background: #111; color: #e6e6e6; } }
@media (max-width: 480px) { body { padding: 8px; } }
main { max-width: 980px; margin: 0 auto; display: flex; flex-direction: column; gap: 20px; }
h1 { font-size: 20px; font-weight: 600; margin: 0; }
.lw-page-info { margin: 0; font-size: 13px; opacity: 0.75; }
"""


def _encode(value):
    """bytes -> {"$b64": ...} (the page turns them back into DataViews), recursively."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def script_json(obj) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' survives, so neither '</script>' nor '<!--' can appear."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def bundle_source(path=BUNDLE) -> str:
    """The widgets' front-end bundle (``js/`` built by esbuild into ``static/widget.js``), or its loader stub."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build the front end with `cd js && npm ci && npm run build` "
                                "(scripts/setup.sh does this)")
    return path.read_text(encoding="utf-8")


def page_html(widgets, *, title=None, info=None, bundle=None) -> str:
    """The HTML of one offline page showing ``widgets`` (live widgets; their current state is frozen)."""
    widgets = list(widgets) if isinstance(widgets, (list, tuple)) else [widgets]
    if not widgets or not all(callable(getattr(w, "export_state", None)) for w in widgets):
        raise TypeError("widgets must be a landscape_widgets widget or a list of them (SurfaceWidget, CurveWidget)")
    heading = title is not None  # without a page title the widgets' own titles suffice (no repeated heading)
    if title is None:
        title = next((w.title for w in widgets if w.title), "landscape_widgets")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    bundle = bundle_source() if bundle is None else bundle
    parts = [f'<h1>{html.escape(title)}</h1>'] if heading else []
    if info:
        parts.append(f'<p class="lw-page-info">{html.escape(str(info))}</p>')
    for k, w in enumerate(widgets):
        parts.append(f'<section class="lw-host" id="lw-host-{k}"></section>')
        parts.append(f'<script type="application/json" data-lw-state="lw-host-{k}">'
                     f'{script_json(_encode(w.export_state()))}</script>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body><main>"
            + "\n".join(parts)
            + f'\n</main><script type="application/json" id="lw-bundle">{script_json(bundle)}</script>\n'
            f'<script type="module">{_LOADER}</script>\n</body></html>\n')


def write_html(path, widgets, *, title=None, info=None) -> str:
    """Write :func:`page_html` to ``path`` (atomically); returns the path."""
    path = os.fspath(path)
    text = page_html(widgets, title=title, info=info)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
