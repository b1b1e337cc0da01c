// TrajectoryWidget view: the optimization path embedded in 2-D / 3-D, coloured by step or loss, with the
// measures (trustworthiness, reconstruction error, explained variance) that say how far to trust the picture.
import { baseLayout, escapeForPlotly } from "./figure.js";
import { formatLoss, toFloat32 } from "./codec.js";
import { viewControls } from "./controls.js";
import { createFrame, markGrid } from "./view.js";

const RUN_COLORS = ["#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];

/** "PC 1 (40.0% of variance)", ...; ``names``: method -> axis name, from the kernel's controls spec. */
function axisTitles(m, dims, names = {}) {
  const ev = m.explained_variance;
  return Array.from({ length: dims }, (_, k) => {
    const base = `${names[m.method] || "dim"} ${k + 1}`;
    return ev && ev[k] != null ? `${base} (${(100 * ev[k]).toFixed(1)}% of variance)` : base;
  });
}

/** The measures line shown beside the plot (plain text). */
export function measuresText(m) {
  if (!m || m.trustworthiness == null) return "";
  const parts = [`trustworthiness ${m.trustworthiness.toFixed(3)} (k = ${m.n_neighbors})`];
  if (m.reconstruction_error != null) {
    parts.push(`reconstruction error ${formatLoss(m.reconstruction_error)} (in-sample)`);
  } else parts.push(`reconstruction error n/a${m.reconstruction_reason ? `: ${m.reconstruction_reason}` : ""}`);
  if (m.explained_variance) {
    const sum = m.explained_variance.reduce((a, b) => a + b, 0);
    parts.push(`explained variance ${m.explained_variance.map((v) => `${(100 * v).toFixed(1)}%`).join(" + ")}` +
               ` = ${(100 * sum).toFixed(1)}%`);
  }
  if (m.strides && m.strides.some((s) => s > 1)) parts.push(`every ${m.strides.join(" / ")}th recorded step kept`);
  return parts.join(" · ");
}

/**
 * Trajectory state -> {data, layout}.  s: {coords, shape: [n, dims], steps, losses, run, labels, measures,
 * colorBy}.  One trace per run (a line through its snapshots in order), markers coloured by step or log10 loss.
 */
export function trajectoryFigure(s, theme) {
  const [n, dims] = s.shape;
  const xyz = toFloat32(s.coords);
  const steps = toFloat32(s.steps);
  const losses = toFloat32(s.losses);
  const run = toFloat32(s.run);
  const hasLoss = Array.from(losses).some((v) => Number.isFinite(v) && v > 0);
  const byLoss = s.colorBy === "loss" && hasLoss;
  const color = (i) => (byLoss ? (Number.isFinite(losses[i]) && losses[i] > 0 ? Math.log10(losses[i]) : null)
                                : steps[i]);
  const values = Array.from({ length: n }, (_, i) => color(i)).filter((v) => v != null);
  const cmin = values.length ? Math.min(...values) : 0;
  const cmax = values.length ? Math.max(...values) : 1;
  const runs = [...new Set(Array.from(run))];
  const labels = s.labels || [];
  const data = runs.map((r, k) => {
    const idx = [];
    for (let i = 0; i < n; i++) if (run[i] === r) idx.push(i);
    const col = (d) => idx.map((i) => xyz[i * dims + d]);
    const label = escapeForPlotly(labels[r] ?? `run ${r}`);
    const trace = {
      type: dims === 3 ? "scatter3d" : "scatter", mode: "lines+markers", name: label, x: col(0), y: col(1),
      line: { color: RUN_COLORS[k % RUN_COLORS.length], width: 2 },
      marker: { color: idx.map(color), colorscale: "Viridis", cmin, cmax, size: dims === 3 ? 4 : 8,
                showscale: k === 0, colorbar: { title: { text: byLoss ? "log10 loss" : "step" }, thickness: 14 },
                line: { width: dims === 3 ? 0 : 1, color: RUN_COLORS[k % RUN_COLORS.length] } },
      text: idx.map((i) => `step ${steps[i]}<br>loss ${formatLoss(losses[i])}`),
      hovertemplate: `%{text}<extra>${label}</extra>`,
    };
    if (dims === 3) trace.z = col(2);
    return trace;
  });
  const titles = axisTitles(s.measures || {}, dims, s.axisNames);
  const layout = baseLayout(theme);
  const ax = (t) => ({ title: { text: t }, gridcolor: theme.grid, zerolinecolor: theme.grid, color: theme.foreground });
  if (dims === 3) {
    layout.scene = { uirevision: "lw", bgcolor: theme.background, xaxis: ax(titles[0]), yaxis: ax(titles[1]),
                     zaxis: ax(titles[2]) };
    layout.margin = { l: 0, r: 0, t: layout.margin.t, b: 0 };
  } else {
    layout.xaxis = ax(titles[0]);
    layout.yaxis = ax(titles[1]);
  }
  layout.showlegend = runs.length > 1;
  layout.legend = { bgcolor: "rgba(0,0,0,0)" };
  return { data, layout };
}

export function renderTrajectory({ model, el }) {
  const f = createFrame({ model, el, view: "trajectory" });
  const c = viewControls(model.get("_controls"));
  f.select("method", "lw-method", "method", c.choices("method"));
  f.select("dims", "lw-dims", "dims", c.choices("dims"));
  const nn = f.number("n_neighbors", "lw-neighbors", "UMAP neighbours", { ...c.limits("n_neighbors"), step: 1 });
  // only UMAP has neighbours (the .lw-control display rule would override the hidden attribute)
  const syncNeighbors = () => { nn.wrap.style.display = model.get("method") === "umap" ? "" : "none"; };
  syncNeighbors(); f.listen("change:method", syncNeighbors);
  f.number("seed", "lw-seed", "seed", { ...c.limits("seed"), step: 1 });
  f.select("color_by", "lw-color-by", "colour by", c.choices("color_by"), { kernel: false });
  const measures = f.h("div", { class: "lw-measures", role: "note" });
  measures.style.cssText = "font-size: 12px; margin: 0 0 6px; overflow-wrap: anywhere;";
  f.plotDiv.before(measures);
  const syncMeasures = () => { measures.textContent = measuresText(model.get("_measures")); };
  syncMeasures(); f.listen("change:_measures", syncMeasures);

  let drawn = null;
  f.setBuild((theme) => {
    const s = { coords: model.get("_coords"), shape: model.get("_shape") || [0, 0], steps: model.get("_steps"),
                losses: model.get("_losses"), run: model.get("_run_index"), labels: model.get("_labels"),
                measures: model.get("_measures"), colorBy: model.get("color_by"), state: model.get("_state"),
                axisNames: c.spec.axis_names };
    if (!s.shape[0] || !s.coords) return null;
    drawn = s;
    return trajectoryFigure(s, theme);
  }, (plotDiv) => markGrid(plotDiv, drawn, f.offline));
  for (const k of c.redraw) f.listen(`change:${k}`, f.request);
  return f.dispose;
}
