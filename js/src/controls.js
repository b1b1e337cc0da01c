// SurfaceWidget's controls as the kernel declares them (no plotly here: tested on its own).

/** A view's controls as the kernel declares them (its ``_controls`` trait, ControlSpec.to_json()): each control's
 *  limits ({min, max} for an input) and choices ([[value, label], ...]), and the traits whose change redraws the
 *  plot.  The front end keeps no limits or choices of its own. */
export function viewControls(spec) {
  const s = spec || {};
  const limits = s.limits || {};
  const choices = s.choices || {};
  return {
    spec: s,
    limits: (name) => (limits[name] ? { min: limits[name][0], max: limits[name][1] } : {}),
    choices: (name) => choices[name] || [],
    redraw: Array.isArray(s.redraw) ? s.redraw : [],
  };
}

// SurfaceWidget's _controls: the limits, the normalizations, the views and which controls change the directions of
// the plane's kind.  A state saved before the kernel sent them (an older notebook) gets a random plane's.
const SAVED_BEFORE_SPECS = { kind: { name: "random", controls: ["seed", "normalization", "seeds"] },
                             limits: { resolution: [5, 201], span: [1e-3, 1e3], seeds: [1, 16] },
                             normalizations: ["filter", "layer", "model", "none"], quantities: ["loss"],
                             views: ["contour", "heatmap", "surface"] };

export function surfaceControls(spec) {
  const s = spec || SAVED_BEFORE_SPECS;
  const limits = s.limits || {};
  const views = viewControls(s).choices("view");
  return {
    ...viewControls(s),
    kind: s.kind || SAVED_BEFORE_SPECS.kind,
    resolution: limits.resolution,
    span: limits.span,
    seeds: limits.seeds,
    normalizations: s.normalizations || [],
    quantities: s.quantities || ["loss"],
    views: views.length ? views : (s.views || []).map((v) => [v, v]),
  };
}

export const CURVATURE_LABEL = "|λmin/λmax|";

/** The "show" select's options: the loss, each metric by its name, the curvature map (Li et al. §6).  An offline
 *  page offers the curvature map only when it was computed (nothing can compute it there). */
export function showOptions(quantities, { offline = false, hasCurvature = false } = {}) {
  return quantities.filter((q) => q !== "curvature" || !offline || hasCurvature)
    .map((q) => [q, q === "curvature" ? `curvature ${CURVATURE_LABEL}` : q]);
}

/** What the surface plot draws for ``show``: the loss (log scale as asked), a metric (linear), or the curvature
 *  map on its own coarse grid; ``s`` is the widget state, ``metrics`` name -> bytes, ``curvature`` the map or {}. */
export function shownQuantity(s, show, metrics, curvature) {
  if (show && show !== "loss" && show !== "curvature" && metrics && metrics[show])
    return { ...s, losses: metrics[show], label: show, logScale: false };
  if (show === "curvature" && curvature && curvature.ratio && curvature.shape)
    return { ...s, losses: curvature.ratio, alphas: curvature.alphas, betas: curvature.betas, shape: curvature.shape,
             label: CURVATURE_LABEL, logScale: false, iqr: null, state: "done", done: null };
  return s;
}
