// CurveWidget view: 1-D loss profiles (interpolations, random lines), several overlaid with a legend.
import { curveFigure } from "./figure.js";
import { viewControls } from "./controls.js";
import { createFrame } from "./view.js";

export function renderCurve({ model, el }) {
  const f = createFrame({ model, el, view: "curve" });
  const c = viewControls(model.get("_controls"));
  f.range("steps", "lw-steps", "steps", c.limits("steps"));
  const parseSpan = (k) => (v) => { const s = [...(model.get("span") || [0, 1])]; s[k] = Number(v); return s; };
  const span = c.limits("span");
  const lo = f.h("input", { type: "number", class: "lw-span-start", step: 0.1, ...span, "aria-label": "span start" });
  const hi = f.h("input", { type: "number", class: "lw-span-stop", step: 0.1, ...span, "aria-label": "span stop" });
  const syncSpan = () => { const s = model.get("span") || [0, 1]; lo.value = s[0]; hi.value = s[1]; };
  for (const [k, input] of [[0, lo], [1, hi]]) {
    input.addEventListener("change", () => { model.set("span", parseSpan(k)(input.value)); model.save_changes(); });
    input.disabled = f.offline;
    f.enterCommits(input);
  }
  syncSpan(); f.listen("change:span", syncSpan);
  f.control("α from", lo, f.h("span", { text: "to" }), hi);
  if (model.get("_random")) {
    const seed = f.number("seed", "lw-seed", "seed", { ...c.limits("seed"), step: 1 });
    f.button("lw-new-seed", "new seed", () => { model.set("seed", Math.floor(Math.random() * 1e6)); model.save_changes(); },
             { parent: seed.wrap });
    f.select("normalization", "lw-normalization", "normalization", c.choices("normalization"));
  }
  f.checkbox("log_scale", "lw-log", "log scale", { kernel: false });
  const quantities = c.choices("show");
  if (quantities.length > 1) f.select("show", "lw-show", "show", quantities, { kernel: false });

  let drawn = null;
  f.setBuild((theme) => {
    const curves = model.get("_curves") || [];
    if (!curves.length) return null;
    drawn = { curves, state: model.get("_state") };
    return curveFigure({ curves, logScale: !!model.get("log_scale"), title: model.get("title"),
                         show: model.get("show") }, theme);
  }, (plotDiv) => {
    plotDiv.dataset.rows = String(drawn.curves.length);
    plotDiv.dataset.cols = String(drawn.curves[0].losses.byteLength / 4);
    plotDiv.dataset.state = f.offline ? "offline" : drawn.state || "done";
  });
  for (const k of c.redraw) f.listen(`change:${k}`, f.request);
  return f.dispose;
}
