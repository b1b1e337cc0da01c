// Shared widget frame: root, title, control helpers, plot lifecycle (newPlot once, then react), resize, theme.
import Plotly from "./plotly.js";
import { adoptStyles, injectStyle } from "./style.js";
import { statusText } from "./status.js";
import { readTheme, watchTheme } from "./theme.js";

const NARROW_WIDGET_PX = 460; // a side panel: the status wraps instead of being cut (style.js)
const CONFIG = { displaylogo: false, responsive: false, scrollZoom: false,
                 modeBarButtonsToRemove: ["select2d", "lasso2d", "sendDataToCloud"] };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c) node.appendChild(c);
  return node;
}
export { h };

/**
 * Outside a notebook (a sidecar panel, "Create New View for Output") the widget owns a whole JupyterLab panel:
 * let the plot take the panel's height instead of the fixed cell height.  Inside a notebook nothing changes.
 */
function fillPanelHeight(el, root, plotDiv, cleanup) {
  const panel = el.closest(".lm-DockPanel-widget");
  if (!panel || el.closest(".jp-NotebookPanel")) return;
  const fit = () => {
    const chrome = root.getBoundingClientRect().height - plotDiv.getBoundingClientRect().height;
    const free = panel.clientHeight - chrome - 24; // 24: the output area's own padding
    const h = `${Math.max(300, Math.floor(free))}px`;
    if (plotDiv.style.height !== h) plotDiv.style.height = h; // the root's ResizeObserver redraws
  };
  const ro = new ResizeObserver(fit);
  ro.observe(panel);
  ro.observe(root);  // the trust panel or a warning arriving later takes height from the plot, not from view
  cleanup(() => ro.disconnect());
}

/**
 * Build the frame in el; returns helpers.  Everything registered through `listen` / `cleanup` is undone by
 * `dispose` (model listeners, observers, the plotly graph), which render() returns to anywidget.
 */
export function createFrame({ model, el, view }) {
  injectStyle();
  const offline = model.get("_offline") === true;
  const disposers = [];
  const root = h("div", { class: "lw-widget", "data-view": view });
  if (offline) root.dataset.offline = "true";
  const title = h("div", { class: "lw-title" });
  const note = offline ? h("div", { class: "lw-offline-note",
    text: "Static snapshot: controls that need the kernel are disabled; view, log scale, hover and zoom work." }) : null;
  const controls = h("div", { class: "lw-controls" });
  const plotDiv = h("div", { class: "lw-plot", "data-renders": "0", "data-state": "preview" });
  const status = h("span", { class: "lw-status", role: "status" });
  const progress = h("progress", { class: "lw-progress", max: "1", value: "0" });
  const footer = h("div", { class: "lw-footer" }, status, progress);
  const error = h("div", { class: "lw-error", role: "alert" });
  error.hidden = true;
  root.append(title, ...(note ? [note] : []), controls, plotDiv, footer, error);
  el.appendChild(root);
  // A focused control takes its own keys: the arrows, Home/End, PageUp/Down, Space and digits move a slider, a
  // dropdown or a number field, not JupyterLab's cell selection (its shortcuts listen on the document, so the key
  // must not bubble there; where they listen in the capture phase, each control's data-lm-suppress-shortcuts makes
  // lumino skip the key, see control()).  Tab, Escape and modified keys (Ctrl+S, Shift+Enter) still reach JupyterLab.
  const ownKeys = (ev) => {
    if (ev.target === controls || ev.key === "Tab" || ev.key === "Escape") return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (ev.shiftKey && ev.key === "Enter")) return;
    ev.stopPropagation();
  };
  controls.addEventListener("keydown", ownKeys);
  disposers.push(() => controls.removeEventListener("keydown", ownKeys));

  const listen = (event, fn) => { model.on(event, fn); disposers.push(() => model.off(event, fn)); };
  const cleanup = (fn) => disposers.push(fn);

  const syncTitle = () => {
    const t = model.get("title") || "";
    title.textContent = t; // text, never HTML
    title.hidden = !t;
  };
  const syncStatus = () => {
    const state = model.get("_state") || "";
    root.dataset.state = state;
    const line = model.get("_status_line") || {};
    status.textContent = statusText(line);
    status.dataset.stage = line.stage || "";
    status.title = status.textContent; // the whole line on hover where it is cut
    const total = model.get("_total") || 0;
    const done = model.get("_done") || 0;
    const running = !offline && (state === "stale" || state === "preview" || state === "partial");
    progress.hidden = !running;
    progress.value = total > 0 ? Math.min(1, done / total) : 0;
    const msg = model.get("error") || "";
    error.textContent = msg;
    error.hidden = !msg;
  };
  syncTitle(); syncStatus();
  listen("change:title", syncTitle);
  for (const k of ["_state", "_status_line", "_done", "_total", "error"]) listen(`change:${k}`, syncStatus);

  // -- controls ------------------------------------------------------------------------------------------
  const commit = (key, value) => { model.set(key, value); model.save_changes(); };
  /** Enter commits a typed number; JupyterLab's notebook shortcuts would otherwise swallow the key. */
  function enterCommits(input) {
    input.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter") return;
      ev.stopPropagation();
      ev.preventDefault();
      input.dispatchEvent(new Event("change"));
    });
  }
  /** Where the front end handles shortcuts in the capture phase (Notebook 7), lumino skips a key whose target
   *  carries data-lm-suppress-shortcuts: every focusable control carries it. */
  const ownsKeys = (node) => { node.setAttribute("data-lm-suppress-shortcuts", "true"); return node; };
  function control(label, ...inputs) {
    for (const node of inputs) if (node.tagName !== "SPAN") ownsKeys(node);
    const wrap = h("label", { class: "lw-control" }, label ? h("span", { class: "lw-label", text: label }) : null,
                   ...inputs);
    controls.appendChild(wrap);
    return wrap;
  }
  /** kernel: the control needs the kernel (disabled offline). */
  function range(key, cls, label, { min, max, step = 1, kernel = true } = {}) {
    const input = h("input", { type: "range", class: cls, min, max, step, "aria-label": label });
    const value = h("span", { class: "lw-value" });
    const sync = () => { input.value = model.get(key); value.textContent = model.get(key); };
    input.addEventListener("input", () => { value.textContent = input.value; });
    input.addEventListener("change", () => commit(key, Number(input.value)));
    sync(); listen(`change:${key}`, sync);
    input.disabled = offline && kernel;
    control(label, input, value);
    return input;
  }
  function number(key, cls, label, { min, max, step, kernel = true, parse = Number } = {}) {
    const input = h("input", { type: "number", class: cls, min, max, step, "aria-label": label });
    const sync = () => { input.value = model.get(key); };
    input.addEventListener("change", () => commit(key, parse(input.value)));
    enterCommits(input);
    sync(); listen(`change:${key}`, sync);
    input.disabled = offline && kernel;
    return { input, wrap: control(label, input) };
  }
  function select(key, cls, label, options, { kernel = true } = {}) {
    const input = h("select", { class: cls, "aria-label": label });
    for (const [value, text] of options) input.appendChild(h("option", { value, text }));
    const sync = () => { input.value = model.get(key); };
    input.addEventListener("change", () => commit(key, input.value));
    sync(); listen(`change:${key}`, sync);
    input.disabled = offline && kernel;
    control(label, input);
    return input;
  }
  function checkbox(key, cls, label, { kernel = false } = {}) {
    const input = h("input", { type: "checkbox", class: cls });
    const sync = () => { input.checked = !!model.get(key); };
    input.addEventListener("change", () => commit(key, input.checked));
    sync(); listen(`change:${key}`, sync);
    input.disabled = offline && kernel;
    control(null, input, h("span", { text: label }));
    return input;
  }
  function button(cls, text, onClick, { kernel = true, parent } = {}) {
    const b = ownsKeys(h("button", { type: "button", class: cls, text }));
    b.addEventListener("click", onClick);
    b.disabled = offline && kernel;
    (parent || controls).appendChild(b);
    return b;
  }

  // -- plot lifecycle --------------------------------------------------------------------------------------
  let build = null, created = false, busy = false, again = false, pending = false, deferred = false;
  let alive = true, renders = 0, afterDraw = null, replotKey, builtSize = { width: 0, height: 0 };
  let userCamera = null; // the 3-D camera as the user last left it (plotly_relayout), kept through a fresh plot
  const trackCamera = () => plotDiv.on?.("plotly_relayout", (ev) => {
    if (ev && ev["scene.camera"]) userCamera = JSON.parse(JSON.stringify(ev["scene.camera"]));
  });
  let theme = readTheme(root);
  async function flush() {
    pending = false;
    if (!alive || !build) return;
    if (busy) { again = true; return; }
    if (!plotDiv.isConnected || plotDiv.clientWidth === 0) { deferred = true; return; } // drawn on first resize
    deferred = false;
    busy = true;
    try {
      const size = { width: plotDiv.clientWidth, height: plotDiv.clientHeight };
      const resized = size.width !== builtSize.width || size.height !== builtSize.height;
      builtSize = size;
      const fig = build(theme, builtSize);
      if (!fig) return;
      // a 3-D scene that changed size is drawn afresh, with the user's camera: after Plotly.react its WebGL
      // scene kept the old viewport and drew tiny or cut after a side panel was resized
      const rekeyed = fig.replotKey !== undefined && fig.replotKey !== replotKey;
      const fresh3d = !!fig.layout.scene && created && resized && !rekeyed;
      if (fresh3d && userCamera) fig.layout.scene.camera = JSON.parse(JSON.stringify(userCamera));
      // fig.replotKey (optional): when it changes, a fresh newPlot instead of react (see figure.js)
      if (!created || fresh3d || rekeyed) {
        await Plotly.newPlot(plotDiv, fig.data, fig.layout, CONFIG);
        if (rekeyed) userCamera = null; // a new scene (another shape) starts from its own camera
        trackCamera(); // newPlot drops the div's listeners
        created = true;
      } else await Plotly.react(plotDiv, fig.data, fig.layout, CONFIG);
      replotKey = fig.replotKey;
      renders += 1;
      plotDiv.dataset.renders = String(renders);
      afterDraw?.(plotDiv);
    } catch (err) {
      error.textContent = `could not draw: ${err && err.message ? err.message : err}`;
      error.hidden = false;
      plotDiv.dataset.state = "error";
    } finally {
      busy = false;
      if (again && alive) { again = false; request(); }
    }
  }
  function request() {
    if (pending) return;
    pending = true;
    queueMicrotask(flush); // coalesce the several change events one kernel message fires
  }
  let resizeTimer = null;
  const ro = new ResizeObserver(() => {
    if (!alive) return;
    root.dataset.narrow = String(root.clientWidth < NARROW_WIDGET_PX);
    if (deferred || !created) { request(); return; }
    clearTimeout(resizeTimer);
    // a rebuild when the plot itself changed size (the surface places its colorbar by the plot's size in
    // pixels); the widget growing around it (a status on two lines) redraws nothing
    resizeTimer = setTimeout(() => {
      if (!alive || !created || plotDiv.clientWidth === 0) return;
      if (plotDiv.clientWidth !== builtSize.width || plotDiv.clientHeight !== builtSize.height) request();
    }, 60);
  });
  ro.observe(root);
  cleanup(() => { ro.disconnect(); clearTimeout(resizeTimer); });
  // el is attached to the page after render() returns: look for the panel once it is
  let panelChecked = false;
  const attach = new ResizeObserver(() => {
    if (panelChecked || !root.isConnected) return;
    panelChecked = true;
    attach.disconnect();
    const home = root.getRootNode();
    if (typeof ShadowRoot !== "undefined" && home instanceof ShadowRoot) adoptStyles(home);
    fillPanelHeight(el, root, plotDiv, cleanup);
  });
  attach.observe(root);
  cleanup(() => attach.disconnect());
  cleanup(watchTheme(() => {
    const next = readTheme(root);
    if (JSON.stringify(next) !== JSON.stringify(theme)) { theme = next; request(); }
  }));

  function dispose() {
    alive = false;
    for (const fn of disposers.splice(0)) { try { fn(); } catch (_) { /* keep disposing */ } }
    try { Plotly.purge(plotDiv); } catch (_) { /* already gone */ }
    root.remove();
  }

  return { root, plotDiv, controls, offline, listen, cleanup, range, number, select, checkbox, button, control, h,
           enterCommits,
           setBuild(fn, after) { build = fn; afterDraw = after; request(); }, request, dispose };
}

/** Test hooks on the plot div: the grid drawn (rows x cols) and its state ("offline" in an exported page). */
export function markGrid(plotDiv, drawn, offline) {
  plotDiv.dataset.rows = String(drawn.shape[0]);
  plotDiv.dataset.cols = String(drawn.shape[1]);
  plotDiv.dataset.state = offline ? "offline" : drawn.state || "done";
}
