// Plotly figure builders: pure functions of the widget state and the theme (unit-tested with vitest).
import { formatLoss, gridToRows, toFloat32, transform } from "./codec.js";

export const UIREVISION = "lw"; // constant: zoom and the 3-D camera survive Plotly.react updates
const COLORSCALE = "Viridis";

/** The widget shows its title above the controls (as text); the figure itself carries none. */
export function baseLayout(theme) {
  return {
    uirevision: UIREVISION,
    autosize: true,
    margin: { l: 60, r: 20, t: 28, b: 50 },
    paper_bgcolor: theme.background,
    plot_bgcolor: theme.background,
    font: { color: theme.foreground, family: theme.fontFamily, size: 12 },
    hoverlabel: { font: { family: theme.fontFamily } },
    modebar: { bgcolor: "rgba(0,0,0,0)", color: theme.muted, activecolor: theme.foreground },
  };
}

/** Plotly renders a subset of HTML in titles; user strings must stay text. */
export function escapeForPlotly(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** "rgb(r, g, b)" -> "rgba(r, g, b, alpha)" (theme colours are rgb() strings). */
export function withAlpha(rgb, alpha) {
  const m = /^rgba?\(([^)]+)\)$/.exec(String(rgb).trim());
  if (!m) return rgb;
  const [r, g, b] = m[1].split(",").map((v) => v.trim());
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/** A log axis labels whole decades only when the data span one or more (else plotly's minor labels 2, 5 read
 *  as values); below a decade it keeps plotly's own ticks, so the axis is never unlabelled. */
export function logTicks(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) if (v != null && v > 0 && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return hi > 0 && Math.log10(hi) - Math.log10(lo) >= 1 ? { dtick: 1, exponentformat: "power" } : {};
}

function axis(theme, title, extra = {}) {
  return { title: { text: title }, gridcolor: theme.grid, zerolinecolor: theme.grid, linecolor: theme.grid,
           color: theme.foreground, ...extra };
}

/** Ticks of the 3-D z axis: about ``n`` round values, none in the lowest sixth of the range, where plotly puts
 *  the z axis's foot next to the α axis's end label and their labels overlapped. */
export function zTicks(rows, n = 5) {
  let lo = Infinity, hi = -Infinity;
  for (const row of rows) for (const v of row) if (v != null && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!(hi > lo)) return {};
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const floor = lo + (hi - lo) / 6, tickvals = [];
  for (let k = Math.ceil(floor / step); k * step <= hi + 1e-9 * step; k++) tickvals.push(+(k * step).toPrecision(12));
  return tickvals.length >= 2 ? { tickmode: "array", tickvals } : {};
}

const COLORBAR_PX = 90; // the colorbar with its tick labels and title
const NARROW_PX = 460;  // below this width (a side panel) the colorbar goes under the plot

/** A narrow view (a side panel of 300 px) gives the plot the whole width: the colorbar lies flat under it. */
export function colorbarBelow(layout, trace) {
  trace.colorbar = { ...trace.colorbar, orientation: "h", x: 0.5, xanchor: "center", y: -0.16, yanchor: "top",
                     thickness: 10, len: 0.9, title: { ...(trace.colorbar || {}).title, side: "top" } };
  layout.margin = { ...layout.margin, l: Math.min(layout.margin.l, 56), r: 8, b: Math.max(layout.margin.b, 96) };
}

/** Equal units on both axes, the plot centred with its colorbar right beside it (plotly puts the colorbar at the
 *  edge of the whole figure, which left a wide gap after a square plot in a wide cell).  ``size``: the plot div in
 *  pixels. */
export function placeBesideColorbar(layout, trace, xr, yr, size) {
  const m = layout.margin;
  const w = size.width - m.l - m.r, h = size.height - m.t - m.b;
  if (size.width < NARROW_PX) { colorbarBelow(layout, trace); return; }
  if (!(w > COLORBAR_PX + 40 && h > 40)) return;
  const plotW = Math.min(w - COLORBAR_PX, h * Math.abs((xr[1] - xr[0]) / (yr[1] - yr[0] || 1)));
  const left = (w - COLORBAR_PX - plotW) / 2;
  layout.xaxis.domain = [left / w, (left + plotW) / w];
  trace.colorbar = { ...trace.colorbar, x: (left + plotW + 12) / w, xanchor: "left" };
}

/**
 * Surface state -> {data, layout}.  s: {losses, alphas, betas, shape:[nx, ny], done, state, logScale, view};
 * size: the plot's {width, height} in pixels, where known.
 * While streaming, rows i >= done / ny are not computed yet (tiles are whole rows): hover says "pending" there.
 */
export function surfaceFigure(s, theme, size) {
  const [nx, ny] = s.shape;
  const flat = toFloat32(s.losses);
  const xs = Array.from(toFloat32(s.alphas));
  const ys = Array.from(toFloat32(s.betas));
  const z = gridToRows(flat, nx, ny, s.logScale);
  // while the full grid streams (state "partial"), rows i >= done / ny still show the preview
  const rowsDone = s.state === "partial" && s.done != null ? Math.floor(s.done / Math.max(ny, 1)) : nx;
  const iqr = s.iqr && s.iqr.byteLength ? toFloat32(s.iqr) : null; // seed spread: median drawn, IQR on hover
  const text = new Array(ny);
  for (let j = 0; j < ny; j++) {
    const row = new Array(nx);
    for (let i = 0; i < nx; i++) {
      const v = formatLoss(flat[i * ny + j]);
      row[i] = i >= rowsDone ? `${v} (preview, pending)` : iqr ? `${v} (median; IQR ${formatLoss(iqr[i * ny + j])})` : v;
    }
    text[j] = row;
  }
  // s.label: a metric or the curvature map drawn instead of the loss (linear, its own name)
  const zLabel = s.label ? escapeForPlotly(s.label) : s.logScale ? "log10 loss" : "loss";
  const hovertemplate = `α %{x:.3f}<br>β %{y:.3f}<br>${s.label ? escapeForPlotly(s.label) : "loss"} %{text}<extra></extra>`;
  const layout = baseLayout(theme);
  // entering or leaving a narrow panel draws the 3-D scene afresh with the camera made for that shape
  const narrow3d = s.view === "surface" && size && size.width < NARROW_PX;
  const fig = { data: null, layout, replotKey: narrow3d ? "surface-narrow" : "surface" };
  let data;
  if (s.view === "surface") {
    data = [{ type: "surface", x: xs, y: ys, z, text, hovertemplate, colorscale: COLORSCALE,
              connectgaps: false, colorbar: { title: { text: zLabel }, thickness: 14 } }];
    layout.scene = { uirevision: UIREVISION, bgcolor: theme.background,
                     xaxis: axis(theme, "α"), yaxis: axis(theme, "β"), zaxis: axis(theme, zLabel, zTicks(z)),
                     aspectmode: "manual", aspectratio: { x: 1, y: 1, z: 0.6 },
                     camera: { eye: { x: 1.45, y: -1.45, z: 0.95 } } }; // initial only: uirevision keeps the user's
    layout.margin = { l: 0, r: 0, t: layout.margin.t, b: 0 };
    if (size && size.width < NARROW_PX) {  // the 3-D scene takes the whole width of a side panel
      colorbarBelow(layout, data[0]);
      layout.margin = { l: 0, r: 0, t: layout.margin.t, b: 70 };
      data[0].colorbar.y = -0.02;
      layout.scene.camera = { eye: { x: 2.0, y: -2.0, z: 1.3 } };  // farther: the whole box in a tall, narrow view
    }
  } else {
    const common = { x: xs, y: ys, z, text, hovertemplate, colorscale: COLORSCALE, connectgaps: false,
                     colorbar: { title: { text: zLabel }, thickness: 14 } };
    data = [s.view === "heatmap"
      ? { type: "heatmap", zsmooth: false, ...common }
      // contour lines in the text colour, half transparent: visible on the dark and the light end of the
      // colour scale, in either theme (black ones vanished near the minimum on a dark page)
      : { type: "contour", ncontours: 24, contours: { coloring: "heatmap" },
          line: { width: 0.5, color: withAlpha(theme.foreground, 0.45) }, ...common }];
    const path = s.path && s.path.byteLength ? toFloat32(s.path) : null;
    if (path && path.length >= 2) {
      // the training trajectory projected on the plane (Li et al. 2018 §7): steps and recorded losses on hover
      const n = path.length / 2;
      const px = new Array(n), py = new Array(n), custom = new Array(n);
      const pl = s.pathLosses && s.pathLosses.byteLength ? toFloat32(s.pathLosses) : null;
      for (let k = 0; k < n; k++) {
        px[k] = path[2 * k];
        py[k] = path[2 * k + 1];
        custom[k] = [s.pathSteps && s.pathSteps[k] != null ? s.pathSteps[k] : k, pl ? formatLoss(pl[k]) : "n/a"];
      }
      data.push({ type: "scatter", mode: "lines+markers", x: px, y: py, customdata: custom, name: "path",
                  line: { color: theme.foreground, width: 1.5 },
                  marker: { size: 6, color: theme.foreground, line: { width: 1, color: theme.background } },
                  hovertemplate: "step %{customdata[0]}<br>α %{x:.3f}, β %{y:.3f}<br>recorded loss %{customdata[1]}<extra>path</extra>",
                  showlegend: false });
    }
    const marks = Array.isArray(s.marks) ? s.marks : [];
    if (marks.length) {
      // other models on a plane through models: labelled markers at their coordinates, their loss on hover
      data.push({ type: "scatter", mode: "markers+text", name: "models",
                  x: marks.map((m) => m.alpha), y: marks.map((m) => m.beta),
                  text: marks.map((m) => escapeForPlotly(m.label)), textposition: "top center",
                  textfont: { color: theme.foreground },
                  customdata: marks.map((m) => formatLoss(m.loss == null ? NaN : m.loss)),
                  marker: { symbol: "circle", size: 9, color: theme.background, line: { width: 2, color: theme.foreground } },
                  hovertemplate: "%{text}<br>α %{x:.3f}, β %{y:.3f}<br>loss %{customdata}<extra>model</extra>",
                  showlegend: false });
    } else if (xs.length && xs[0] <= 0 && xs[xs.length - 1] >= 0 && ys[0] <= 0 && ys[ys.length - 1] >= 0) {
      data.push({ type: "scatter", mode: "markers", x: [0], y: [0], name: "model",
                  marker: { symbol: "x", size: 9, color: theme.foreground, line: { width: 1 } },
                  hovertemplate: "the model's weights<extra></extra>", showlegend: false });
    }
    // Explicit ranges = the grid's extent (heatmap cells reach half a step beyond): with autorange, plotly.js
    // widens the x range instead of shrinking the domain after a react with a new extent.  uirevision still
    // keeps a user's zoom, as long as the extent (the value we send) does not change.
    const pad = (v) => (s.view === "heatmap" && v.length > 1 ? (v[v.length - 1] - v[0]) / (v.length - 1) / 2 : 0);
    const extent = (v) => (v.length ? [v[0] - pad(v), v[v.length - 1] + pad(v)] : undefined);
    layout.xaxis = axis(theme, "α  (direction d1)", { constrain: "domain", range: extent(xs), autorange: false });
    layout.yaxis = axis(theme, "β  (direction d2)", { scaleanchor: "x", scaleratio: 1, constrain: "domain",
                                                      range: extent(ys), autorange: false });
    // plotly.js keeps the old constrained domain through react and widens the x range instead: a new extent
    // (a span change) gets a fresh plot; a zoom survives recomputes on the same extent (seed, resolution)
    fig.replotKey = `${extent(xs)}|${extent(ys)}`;
    if (size && xs.length > 1 && ys.length > 1) placeBesideColorbar(layout, data[0], extent(xs), extent(ys), size);
  }
  fig.data = data;
  return fig;
}

const CURVE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/** Curve state -> {data, layout}.  s: {curves: [{label, alphas, losses, kind}], logScale, title}. */
export function curveFigure(s, theme) {
  // s.show: a metric drawn instead of the loss (linear, under its own name), for the curves that have it
  const metric = s.show && s.show !== "loss" ? s.show : null;
  const name = metric ? escapeForPlotly(metric) : "loss";
  const logScale = s.logScale && !metric;
  const shown = metric ? s.curves.filter((c) => c.metrics && c.metrics[metric]) : s.curves;
  const data = shown.map((c) => {
    const xs = Array.from(toFloat32(c.alphas));
    const raw = toFloat32(metric ? c.metrics[metric] : c.losses);
    const ys = Array.from(raw, (v) => transform(v, false) ?? null);
    return { type: "scatter", mode: xs.length <= 21 ? "lines+markers" : "lines", name: escapeForPlotly(c.label),
             x: xs, y: logScale ? ys.map((v) => (v != null && v > 0 ? v : null)) : ys, connectgaps: false,
             line: { color: CURVE_COLORS[s.curves.indexOf(c) % CURVE_COLORS.length], width: 2 },
             text: Array.from(raw, formatLoss),
             hovertemplate: `α %{x:.3f}<br>${name} %{text}<extra>%{fullData.name}</extra>` };
  });
  const layout = baseLayout(theme);
  const every = (kind) => s.curves.length > 0 && s.curves.every((c) => c.kind === kind);
  layout.xaxis = axis(theme, every("interpolation") ? "α  (0 = start, 1 = model)"
    : every("connect") ? "t  (0 = model, 1 = model_b)"
    : s.curves.some((c) => c.kind === "connect") ? "α, t" : "α  (distance along the direction)");
  layout.yaxis = axis(theme, name, logScale ? { type: "log", ...logTicks(data.flatMap((t) => t.y)) }
                                           : { type: "linear" });
  layout.showlegend = shown.length > 1;
  layout.legend = { bgcolor: "rgba(0,0,0,0)" };
  return { data, layout };
}
