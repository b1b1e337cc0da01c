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
  };
}
