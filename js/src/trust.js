// The trust panel of a surface (Böttcher & Wheeler 2022, arXiv 2208.13219): the curvature κ(d) = dᵀHd/‖d‖² along
// each plotted direction next to λmax, λmin and tr(H)/N, and a warning when λmin < 0 while both κ > 0 (the slice
// hides a saddle).  Shared by the surface view (a box under the plot) and the spectrum view (its side panel).
import { REASON_CSS, reasonBox, trustFailure } from "./reason.js";
import { injectCss } from "./style.js";

export const WARNING = "λmin < 0 but both plotted directions curve upwards: this slice hides a saddle.";

export const TRUST_CSS = `
.lw-warning { color: var(--lw-error); border: 1px solid var(--lw-error); border-radius: 4px; padding: 4px 6px;
  font-weight: 600; }
.lw-warning[hidden] { display: none; }
.lw-trust { position: relative; font-size: 12px; margin-top: 6px; display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; }
.lw-trust[hidden] { display: none; }
.lw-trust[data-updating="true"] { opacity: 0.45; }
.lw-trust[data-updating="true"]::after { content: "updating…"; position: absolute; right: 0; top: 0; }
.lw-trust > .lw-warning { flex-basis: 100%; }
.lw-trust-item { font-variant-numeric: tabular-nums; white-space: nowrap; }
.lw-trust-item > span:first-child { color: var(--lw-muted); margin-right: 4px; }
${REASON_CSS}`;

export function injectTrustStyle(doc = document) {
  injectCss("lw-trust-style", TRUST_CSS, doc);
}

export function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "n/a";
  return Number(v.toPrecision(4)).toString();
}

/** [label, value] rows of a trust panel dict ({kappa, lambda_max, lambda_min, trace_over_n, ...}); [] without one.
 *  The panel of a seed spread (the median view) has kappa_range instead: kappa over all seeds' planes, min … max. */
export function trustRows(t) {
  if (!t) return [];
  let rows;
  if (Array.isArray(t.kappa)) {
    rows = t.kappa.map((v, i) => [`κ(d${i + 1})`, fmt(v)]);
  } else if (Array.isArray(t.kappa_range) && Array.isArray(t.seeds)) {
    const n = t.seeds.length;
    rows = t.kappa_range.map(([lo, hi], i) => [`κ(d${i + 1}), ${n} seeds`, `${fmt(lo)} … ${fmt(hi)}`]);
  } else {
    return [];
  }
  // a panel still growing (partial: the kappas first, then the eigenvalues) shows "…" for what is still computing
  const val = (v) => (t.partial && v === undefined ? "…" : fmt(v));
  const tr = Number.isFinite(t.trace_over_n_stderr) ? ` ± ${fmt(t.trace_over_n_stderr)}` : "";
  rows.push(["λmax", val(t.lambda_max)], ["λmin", val(t.lambda_min)],
            ["tr(H)/N", t.partial && t.trace_over_n === undefined ? "…" : `${fmt(t.trace_over_n)}${tr}`]);
  return rows;
}

export function hidesSaddle(t) {
  return !!(t && t.hides_saddle);
}

/** The warning's text: for a seed spread, in how many of its seeds' planes. */
export function warningText(t) {
  if (t && Array.isArray(t.hides_saddle_seeds) && Array.isArray(t.seeds)) {
    return `λmin < 0 but both directions curve upwards in the planes of ${t.hides_saddle_seeds.length} of `
      + `${t.seeds.length} seeds (${t.hides_saddle_seeds.join(", ")}): those slices hide a saddle.`;
  }
  if (t && typeof t.of === "string" && t.of) {
    return `λmin < 0 but both plotted directions curve upwards: the slice "${t.of}" hides a saddle.`;
  }
  return WARNING;
}

/** The warning element, hidden unless the panel says the slice hides a saddle. */
export function warningBox(h, t) {
  const warn = h("div", { class: "lw-warning", role: "alert", text: warningText(t) });
  warn.hidden = !hidesSaddle(t);
  return warn;
}

/** Fill `box` (a div under a surface plot) with the panel: one "label value" item per row, the warning first;
 *  the reason in its place when the kernel could not compute it (the plane above stays as it is). */
export function fillTrustBox(h, box, t) {
  const rows = trustRows(t);
  const failure = trustFailure(t);
  box.replaceChildren();
  box.hidden = rows.length === 0 && !failure;
  box.dataset.hidesSaddle = String(hidesSaddle(t));
  box.dataset.failed = String(!!failure);
  if (failure) {
    box.append(reasonBox(h, failure, t.detail));
    return;
  }
  if (!rows.length) return;
  box.append(warningBox(h, t), h("span", { class: "lw-trust-item", title: "Hessian curvature along the plotted "
    + "directions vs its extreme eigenvalues (Böttcher & Wheeler 2022)" }, h("span", { text: "trust:" })));
  for (const [label, value] of rows) {
    box.append(h("span", { class: "lw-trust-item" }, h("span", { text: label }), h("span", { text: value })));
  }
}
