// SurfaceWidget view: controls for the plane and a contour / heatmap / 3-D surface of the loss.
import { surfaceFigure } from "./figure.js";
import { showOptions, shownQuantity, surfaceControls } from "./controls.js";
import { fillTrustBox, injectTrustStyle } from "./trust.js";
import { createFrame, markGrid } from "./view.js";

export function renderSurface({ model, el }) {
  const f = createFrame({ model, el, view: "surface" });
  const c = surfaceControls(model.get("_controls"));
  f.range("resolution", "lw-resolution", "resolution", { min: c.resolution[0], max: c.resolution[1] });
  const seed = f.number("seed", "lw-seed", "seed", { ...c.limits("seed"), step: 1 });
  f.button("lw-new-seed", "new seed", () => {
    model.set("seed", Math.floor(Math.random() * 1e6)); // a UI choice, not a computation: Math.random is fine here
    model.save_changes();
  }, { parent: seed.wrap });
  f.select("normalization", "lw-normalization", "normalization", c.normalizations.map((n) => [n, n]));
  f.number("seeds", "lw-seeds", "seeds", { min: c.seeds[0], max: c.seeds[1], step: 1 });
  f.number("span", "lw-span", "span ±", { min: c.span[0], max: c.span[1], step: 0.1 });
  f.checkbox("log_scale", "lw-log", "log scale", { kernel: false });
  f.select("view", "lw-view-select", "view", c.views, { kernel: false });
  // loss, the Landscape's metrics (same passes), the curvature map (computed in the kernel when first shown)
  const quantities = showOptions(c.quantities, { offline: f.offline, hasCurvature: !!(model.get("_curvature") || {}).ratio });
  if (quantities.length > 1) f.select("show", "lw-show", "show", quantities, { kernel: false });

  // controls the kind does not offer (a Hessian plane has no seed) stay visible, disabled, with the reason
  const selectors = { seed: [".lw-seed", ".lw-new-seed"], normalization: [".lw-normalization"], seeds: [".lw-seeds"] };
  for (const [control, sel] of Object.entries(selectors)) {
    if (c.kind.controls.includes(control)) continue;
    for (const node of el.querySelectorAll(sel.join(", "))) {
      node.disabled = true;
      node.title = `not used by ${c.kind.name} directions`;
    }
  }
  const state = () => shownQuantity({
    losses: model.get("_losses"), alphas: model.get("_alphas"), betas: model.get("_betas"),
    shape: model.get("_shape") || [0, 0], done: model.get("_done"), logScale: !!model.get("log_scale"),
    view: model.get("view"), title: model.get("title"), state: model.get("_state"),
    iqr: model.get("_iqr"), path: model.get("_path"), pathSteps: model.get("_path_steps"), pathLosses: model.get("_path_losses"),
    marks: model.get("_marks") || [],
  }, model.get("show"), model.get("_metrics"), model.get("_curvature"));
  // the trust panel under the plot: filled once the kernel has the curvatures of this plane (SurfaceWidget(trust=True))
  injectTrustStyle();
  const trust = f.h("div", { class: "lw-trust", "aria-label": "trust panel" });
  f.plotDiv.after(trust);
  // once shown, the panel keeps its place while the next plane computes (dimmed, "updating"), so the page below it
  // does not jump at every change
  let shown = false;
  const syncTrust = () => {
    const t = model.get("_trust") || {};
    if (Object.keys(t).length === 0 && shown) {
      trust.dataset.updating = "true";
      return;
    }
    // a panel that grows again (the kappas first, then the eigenvalues) keeps the last whole panel's height: its
    // fewer items would wrap onto fewer lines and the widget would shrink and grow back
    if (t.partial && shown) {
      if (!trust.style.minHeight) trust.style.minHeight = `${trust.getBoundingClientRect().height}px`;
    } else {
      trust.style.minHeight = "";
    }
    fillTrustBox(f.h, trust, t);
    trust.dataset.updating = "false";
    shown = !trust.hidden;
  };
  syncTrust();
  f.listen("change:_trust", syncTrust);
  let drawn = null;
  f.setBuild((theme, size) => {
    const s = state();
    if (!s.shape[0] || !s.shape[1] || !s.losses) return null;
    drawn = s;
    return surfaceFigure(s, theme, size);
  }, (plotDiv) => markGrid(plotDiv, drawn, f.offline));
  for (const k of c.redraw) f.listen(`change:${k}`, f.request);
  return f.dispose;
}
