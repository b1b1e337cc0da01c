// SurfaceWidget's controls as the kernel declares them (no plotly here: tested on its own).

// what the kernel offers (SurfaceWidget's _controls): the limits, the normalizations, and which controls change the
// directions of the plane's kind; one source for both sides
export function surfaceControls(spec) {
  const kind = (spec && spec.kind) || { name: "random", controls: ["seed", "normalization", "seeds"] };
  const limits = (spec && spec.limits) || {};
  return {
    kind,
    resolution: limits.resolution || [5, 201],
    span: limits.span || [1e-3, 1e3],
    seeds: limits.seeds || [1, 16],
    normalizations: (spec && spec.normalizations) || ["filter", "layer", "model", "none"],
    quantities: (spec && spec.quantities) || ["loss"],
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
