// The trust panel of a surface (Böttcher & Wheeler 2022, arXiv 2208.13219): the curvature κ(d) = dᵀHd/‖d‖² along
// each plotted direction next to λmax, λmin (each ± its Lanczos error bound), Li et al.'s |λmin/λmax| (arXiv
// 1712.09913, §6) and tr(H)/N (named by its estimator and products), and a warning when the negative curvature is
// strong, |λmin| ≥ saddle_threshold · λmax beyond the error bounds, while both κ > 0 (the slice hides a saddle).
// Shared by the surface view (a box under the plot) and the spectrum view (its side panel).
import { REASON_CSS, reasonBox, trustFailure } from "./reason.js";
import { injectCss } from "./style.js";

// the kernel's threshold (landscape_widgets.hessian.trust.SADDLE_RATIO); a panel says its own as saddle_threshold
export const SADDLE_RATIO = 0.05;
export const WARNING = "strong negative curvature (|λmin| ≥ 5 % of λmax), yet both plotted directions curve "
  + "upwards: this slice hides a saddle, a direction along which the loss falls that the plot does not show.";

export const TRUST_CSS = `
.lw-warning { color: var(--lw-error); border: 1px solid var(--lw-error); border-radius: 4px; padding: 4px 6px;
  font-weight: 600; }
.lw-warning[hidden] { display: none; }
.lw-trust { position: relative; font-size: 12px; margin-top: 6px; display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; }
.lw-trust[hidden] { display: none; }
.lw-trust[data-updating="true"] { opacity: 0.45; }
.lw-trust[data-updating="true"]::after { content: "updating…"; position: absolute; right: 0; top: 0; }
.lw-trust > .lw-warning { flex-basis: 100%; }
.lw-trust-item { font-variant-numeric: tabular-nums; display: inline-flex; flex-wrap: wrap; column-gap: 4px;
  max-width: 100%; }
.lw-trust-item > span { white-space: nowrap; }
.lw-trust-item > span:first-child { color: var(--lw-muted); }
${REASON_CSS}`;

export function injectTrustStyle(doc = document) {
  injectCss("lw-trust-style", TRUST_CSS, doc);
}

export function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "n/a";
  return Number(v.toPrecision(4)).toString();
}

/** An error bar in 2 significant digits ("" without a finite one). */
function pm(e) {
  if (e == null || !Number.isFinite(e) || e <= 0) return "";
  return ` ± ${e < 1e-3 ? e.toExponential(1) : Number(e.toPrecision(2))}`;  // "± 6.4e-6", not "± 0.0000064"
}

const ESTIMATORS = { "hutch++": "Hutch++", hutchinson: "Hutchinson" };

/** "tr(H)/N" named by its estimator and products ("tr(H)/N, Hutch++ 30 HVPs"): a page may show two, from
 *  different estimates (a plane's trust panel, a spectrum). */
export function traceLabel(method, samples) {
  const parts = [method ? ESTIMATORS[method] || String(method) : "",
                 Number.isFinite(samples) ? `${samples} HVPs` : ""].filter(Boolean);
  return parts.length ? `tr(H)/N, ${parts.join(" ")}` : "tr(H)/N";
}

/** The alarm threshold a panel was judged by. */
export function saddleThreshold(t) {
  return t && Number.isFinite(t.saddle_threshold) ? t.saddle_threshold : SADDLE_RATIO;
}

function percent(v) {
  return `${Number((100 * v).toPrecision(3))} %`;
}

/** [label, value] rows of a trust panel dict ({kappa, lambda_max, lambda_min, eig_ratio, trace_over_n, ...}); []
 *  without one.  The panel of a seed spread (the median view) has kappa_range instead: kappa over all seeds'
 *  planes, min … max. */
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
  const pending = (v) => t.partial && v === undefined;
  const val = (v, e) => (pending(v) ? "…" : `${fmt(v)}${pm(e)}`);
  const tr = Number.isFinite(t.trace_over_n_stderr) ? ` ± ${fmt(t.trace_over_n_stderr)}` : "";
  rows.push(["λmax", val(t.lambda_max, t.lambda_max_error)], ["λmin", val(t.lambda_min, t.lambda_min_error)]);
  // Li et al.'s ratio, always: the alarm is judged on it (small ratios are the norm of trained networks)
  const ratio = t.eig_ratio !== undefined ? t.eig_ratio
    : Number.isFinite(t.lambda_max) && Number.isFinite(t.lambda_min) && t.lambda_max !== 0
      ? Math.abs(t.lambda_min / t.lambda_max) : null;
  rows.push(["|λmin/λmax|", pending(t.lambda_min) ? "…" : `${fmt(ratio)} (alarm ≥ ${saddleThreshold(t)})`]);
  rows.push([traceLabel(t.trace_method, t.trace_samples),
             pending(t.trace_over_n) ? "…" : `${fmt(t.trace_over_n)}${tr}`]);
  const used = dataLabel(t.data);
  if (used) rows.push(["on", t.refining ? `${used}; refining on all data…` : used]);
  const spread = spreadLabel(t.spread);
  if (spread) rows.push(["spread", spread]);
  return rows;
}

/** What a panel was computed on: "256 of 1797 samples" (a subset), "all 1797 samples"; "" when not said. */
export function dataLabel(d) {
  if (!d || !Number.isFinite(d.num_samples)) return "";
  if (Number.isFinite(d.subset_of)) return `${d.num_samples} of ${d.subset_of} samples`;
  if ("subset_of" in d) return `a subset of ${d.num_samples} samples`;  // of a DataLoader of unknown length
  return `all ${d.num_samples} samples`;
}

/** "λmax 0.92 ± 0.03 over 4 subsets of 256" of a panel computed with spread=; "" without one. */
export function spreadLabel(s) {
  const q = s && s.quantities && s.quantities.lambda_max;
  if (!q || !Number.isFinite(q.mean)) return "";
  const sd = Number.isFinite(q.std) ? ` ± ${Number(q.std.toPrecision(2))}` : "";
  return `λmax ${fmt(q.mean)}${sd} over ${s.subsets} subsets of ${s.samples}`;
}

export function hidesSaddle(t) {
  return !!(t && t.hides_saddle);
}

/** The warning's text: what the alarm means and its threshold, with this panel's numbers; for a seed spread, in
 *  how many of its seeds' planes. */
export function warningText(t) {
  const threshold = saddleThreshold(t);
  const known = t && Number.isFinite(t.lambda_min) && Number.isFinite(t.lambda_max);
  const cause = known && Number.isFinite(t.eig_ratio)
    ? `strong negative curvature: λmin = ${fmt(t.lambda_min)} is ${percent(t.eig_ratio)} of λmax = `
      + `${fmt(t.lambda_max)} (the alarm needs ≥ ${percent(threshold)}, beyond the eigenvalues' error bounds)`
    : `strong negative curvature (|λmin| ≥ ${percent(threshold)} of λmax)`;
  const falls = "a direction along which the loss falls that the plot does not show.";
  if (t && Array.isArray(t.hides_saddle_seeds) && Array.isArray(t.seeds)) {
    return `${cause}, yet both directions curve upwards in the planes of ${t.hides_saddle_seeds.length} of `
      + `${t.seeds.length} seeds (${t.hides_saddle_seeds.join(", ")}): those slices hide a saddle, ${falls}`;
  }
  if (t && typeof t.of === "string" && t.of) {
    return `${cause}, yet both plotted directions curve upwards: the slice "${t.of}" hides a saddle, ${falls}`;
  }
  return `${cause}, yet both plotted directions curve upwards: this slice hides a saddle, ${falls}`;
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
  const title = "Hessian curvature along the plotted directions vs its extreme eigenvalues (Böttcher & Wheeler "
    + `2022); the warning needs |λmin| ≥ ${percent(saddleThreshold(t))} of λmax beyond the error bounds (Li et al. `
    + "2018 read small |λmin/λmax| as convex)";
  box.append(warningBox(h, t), h("span", { class: "lw-trust-item", title }, h("span", { text: "trust:" })));
  for (const [label, value] of rows) {
    box.append(h("span", { class: "lw-trust-item" }, h("span", { text: label }), h("span", { text: value })));
  }
}
