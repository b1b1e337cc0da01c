// SpectrumWidget view: Hessian eigenvalues, the SLQ spectral density on a log axis, the trace with its error bar,
// and the trust panel of a surface (curvatures of its directions, and a warning when the slice hides a saddle).
import { toFloat32 } from "./codec.js";
import { viewControls } from "./controls.js";
import { baseLayout, escapeForPlotly } from "./figure.js";
import { reasonBox, spectrumFailure, trustFailure } from "./reason.js";
import { injectCss } from "./style.js";
import { createFrame } from "./view.js";
import { fmt, injectTrustStyle, traceLabel, trustRows, warningBox } from "./trust.js";

const TOP = "#1f77b4";
const BOTTOM = "#d62728";
const KAPPA = "#2ca02c";
const FLOOR = 1e-10; // density values below FLOOR * max are not drawn on the log axis (they are Gaussian tails)

const CSS = `
.lw-spectrum-row { display: flex; gap: 12px; align-items: stretch; }
.lw-spectrum-row > .lw-plot { flex: 1 1 auto; min-width: 0; height: 400px; }
.lw-spectrum-panel { flex: 0 0 230px; font-size: 12px; display: flex; flex-direction: column; gap: 8px; }
.lw-spectrum-panel h4 { margin: 0 0 2px; font-size: 12px; font-weight: 600; }
.lw-spectrum-panel table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
.lw-spectrum-panel td { padding: 1px 4px; border-bottom: 1px solid var(--lw-border); }
.lw-spectrum-panel td:last-child { text-align: right; }
`;

function injectSpectrumStyle(doc = document) {
  injectCss("lw-spectrum-style", CSS, doc);
}

export { fmt };

function axis(theme, title, extra = {}) {
  return { title: { text: title }, gridcolor: theme.grid, zerolinecolor: theme.grid, linecolor: theme.grid,
           color: theme.foreground, ...extra };
}

/** Marker rows (on a hidden 0..1 axis over the density) for eigenvalues and curvatures, with hover text. */
function marks(xs, y, name, color, symbol) {
  return { type: "scatter", mode: "markers", x: xs, y: xs.map(() => y), yaxis: "y3", name,
           marker: { color, symbol, size: 11, line: { width: 1, color } },
           hovertemplate: `${name} %{x:.4g}<extra></extra>` };
}

/**
 * Spectrum state -> {data, layout}.  s: {top, bottom, grid, density (bytes), trace: {per_parameter,
 * stderr_per_parameter}, trust: {kappa, trace_over_n}, logScale}.
 */
export function spectrumFigure(s, theme) {
  const data = [];
  const grid = Array.from(toFloat32(s.grid));
  const dens = Array.from(toFloat32(s.density));
  const peak = dens.reduce((m, v) => (Number.isFinite(v) && v > m ? v : m), 0);
  if (grid.length) {
    const ys = dens.map((v) => (Number.isFinite(v) && (!s.logScale || v > FLOOR * peak) ? v : null));
    data.push({ type: "scatter", mode: "lines", x: grid, y: ys, name: "density (SLQ)", connectgaps: false,
                line: { color: theme.foreground, width: 1.5 },
                hovertemplate: "λ %{x:.4g}<br>density %{y:.3g}<extra></extra>" });
  }
  if (s.top.length) data.push(marks(s.top, 0.04, "top eigenvalues", TOP, "triangle-up"));
  if (s.bottom.length) data.push(marks(s.bottom, 0.04, "bottom eigenvalues", BOTTOM, "triangle-down"));
  const kappa = (s.trust && s.trust.kappa) || [];
  const kxs = kappa.filter((v) => Number.isFinite(v));
  if (kxs.length) data.push(marks(kxs, 0.12, "κ of the surface's directions", KAPPA, "diamond"));
  const tr = s.trace || {};
  if (Number.isFinite(tr.per_parameter)) {
    data.push({ type: "scatter", mode: "markers", x: ["tr(H)/N"], y: [tr.per_parameter], xaxis: "x2", yaxis: "y2",
                name: "tr(H)/N", marker: { color: theme.foreground, size: 9 },
                error_y: { type: "data", array: [tr.stderr_per_parameter || 0], visible: true, thickness: 1.5, width: 6 },
                hovertemplate: `${traceLabel(tr.method, tr.samples)}: %{y:.4g} ± %{error_y.array:.2g}`
                  + "<extra></extra>" });
  }
  const layout = baseLayout(theme);
  layout.showlegend = true;
  layout.legend = { orientation: "h", y: -0.18, bgcolor: "rgba(0,0,0,0)" };
  layout.margin = { l: 60, r: 20, t: 36, b: 70 };  // room above the inset's top label for plotly's toolbar
  layout.xaxis = axis(theme, "eigenvalue λ", { domain: [0, 0.72] });
  layout.yaxis = axis(theme, s.logScale ? "density (log)" : "density", { type: s.logScale ? "log" : "linear",
                                                                         exponentformat: "power" });
  layout.yaxis3 = { overlaying: "y", range: [0, 1], visible: false, fixedrange: true };
  layout.xaxis2 = axis(theme, "± stderr", { domain: [0.86, 1], anchor: "y2", fixedrange: true });
  // 4 digits: the error bar spans ~1 % of tr(H)/N, and 3 digits labelled every tick alike ("0.00016")
  layout.yaxis2 = axis(theme, "", { anchor: "x2", side: "left", tickformat: ".4~g", zeroline: true });
  return { data, layout };
}

/** The trace table's heading: the spectrum's own estimate, by estimator and products (the trust panel beside it
 *  may show another estimate of tr(H)/N, labelled with its own). */
export function traceHead(tr) {
  const label = traceLabel(tr && tr.method, tr && tr.samples);
  return label === "tr(H)/N" ? "trace" : `trace (${label.slice("tr(H)/N, ".length)})`;
}

/** Rows of the side panel: [label, value] pairs (values as text). */
export function panelRows(s) {
  const rows = { eig: [], trace: [], trust: [] };
  s.top.forEach((v, i) => rows.eig.push([`λ${i + 1} (top)`, fmt(v)]));
  s.bottom.forEach((v, i) => rows.eig.push([`λ${i + 1} (bottom)`, fmt(v)]));
  const tr = s.trace || {};
  if (Number.isFinite(tr.trace)) {
    rows.trace.push(["tr(H)", `${fmt(tr.trace)} ± ${fmt(tr.stderr)}`]);
    rows.trace.push(["tr(H)/N", `${fmt(tr.per_parameter)} ± ${fmt(tr.stderr_per_parameter)}`]);
  }
  rows.trust = trustRows(s.trust);
  return rows;
}

function table(h, rows) {
  const tb = h("table");
  for (const [a, b] of rows) {
    const tr = h("tr", {}, h("td", { text: a }), h("td", { text: b }));
    tb.appendChild(tr);
  }
  return tb;
}

export function renderSpectrum({ model, el }) {
  injectSpectrumStyle();
  injectTrustStyle();
  const f = createFrame({ model, el, view: "spectrum" });
  // the kernel's limits: k and bottom at most the Hessian's size
  const c = viewControls(model.get("_controls"));
  f.number("k", "lw-k", "top k", { ...c.limits("k"), step: 1 });
  f.number("bottom", "lw-bottom", "bottom", { ...c.limits("bottom"), step: 1 });
  f.range("steps", "lw-steps", "Lanczos steps", c.limits("steps"));
  f.number("runs", "lw-runs", "runs", { ...c.limits("runs"), step: 1 });
  f.number("seed", "lw-seed", "seed", { ...c.limits("seed"), step: 1 });
  f.checkbox("density", "lw-density", "density", { kernel: true });
  f.checkbox("log_scale", "lw-log", "log axis", { kernel: false });

  // the side panel sits beside the plot
  const row = f.h("div", { class: "lw-spectrum-row" });
  f.plotDiv.replaceWith(row);
  const panel = f.h("div", { class: "lw-spectrum-panel" });
  row.append(f.plotDiv, panel);
  const syncPanel = () => {
    const s = state();
    const rows = panelRows(s);
    panel.replaceChildren();
    const warn = warningBox(f.h, s.trust);
    panel.dataset.hidesSaddle = String(!!(s.trust && s.trust.hides_saddle));
    const failed = spectrumFailure(s);
    const trustFailed = trustFailure(s.trust);
    panel.dataset.failed = String(!!(failed || trustFailed));
    panel.append(warn);
    if (failed) panel.append(reasonBox(f.h, failed, s.error));
    const trustHead = `trust panel of ${s.trust.of ? `"${s.trust.of}"` : "the surface"}`;
    for (const [key, head] of [["eig", "eigenvalues"], ["trace", traceHead(s.trace)], ["trust", trustHead]]) {
      if (key === "trust" && trustFailed) {
        panel.append(f.h("div", {}, f.h("h4", { text: head }), reasonBox(f.h, trustFailed, s.trust.detail)));
        continue;
      }
      if (!rows[key].length) continue;
      panel.append(f.h("div", {}, f.h("h4", { text: head }), table(f.h, rows[key])));
    }
  };
  const state = () => ({
    top: model.get("_top") || [], bottom: model.get("_bottom") || [], grid: model.get("_grid"),
    density: model.get("_density"), trace: model.get("_trace") || {}, trust: model.get("_trust") || {},
    logScale: !!model.get("log_scale"), state: model.get("_state"), error: model.get("error") || "",
  });
  let drawn = null;
  f.setBuild((theme) => {
    const s = state();
    if (!s.top.length) return null;
    drawn = s;
    return spectrumFigure(s, theme);
  }, (plotDiv) => {
    plotDiv.dataset.eigenvalues = String(drawn.top.length + drawn.bottom.length);
    plotDiv.dataset.points = String(toFloat32(drawn.density).length);
    plotDiv.dataset.state = f.offline ? "offline" : drawn.state || "done";
  });
  syncPanel();
  for (const k of c.redraw) {
    f.listen(`change:${k}`, f.request);
    f.listen(`change:${k}`, syncPanel);
  }
  f.listen("change:error", syncPanel); // the reason a spectrum failed stands in the panel; the plot is unchanged
  return f.dispose;
}

export { escapeForPlotly };
