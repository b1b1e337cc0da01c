import { describe, expect, it } from "vitest";
import { SADDLE_RATIO, WARNING, dataLabel, fillTrustBox, fmt, hidesSaddle, spreadLabel, traceLabel, trustRows,
  warningText } from "../src/trust.js";

describe("what a panel was computed on", () => {
  it("names a subset, all the data, and a quick panel being refined", () => {
    expect(dataLabel({ num_samples: 256, subset_of: 1797 })).toBe("256 of 1797 samples");
    expect(dataLabel({ num_samples: 1797 })).toBe("all 1797 samples");
    expect(dataLabel({ num_samples: 256, subset_of: null })).toBe("a subset of 256 samples");
    expect(dataLabel(undefined)).toBe("");
    const base = { kappa: [1, 2], lambda_max: 3, lambda_min: -0.1, trace_over_n: 0.1 };
    expect(trustRows({ ...base, data: { num_samples: 64, subset_of: 1797 }, refining: true }).at(-1))
      .toEqual(["on", "64 of 1797 samples; refining on all data…"]);
    expect(trustRows({ ...base, data: { num_samples: 1797 } }).at(-1)).toEqual(["on", "all 1797 samples"]);
  });
  it("shows the spread of lambda_max over disjoint subsets", () => {
    const spread = { subsets: 4, samples: 256, quantities: { lambda_max: { mean: 0.9213, std: 0.0314 } } };
    expect(spreadLabel(spread)).toBe("λmax 0.9213 ± 0.031 over 4 subsets of 256");
    expect(spreadLabel(undefined)).toBe("");
  });
});

describe("trustRows", () => {
  it("lists the curvature of each direction, then the eigenvalues and tr(H)/N with its error bar", () => {
    const rows = trustRows({ kappa: [0.5, 0.0012346], lambda_max: 3.25, lambda_min: -0.125, trace_over_n: 0.01,
                             trace_over_n_stderr: 0.002, hides_saddle: true });
    expect(rows).toEqual([["κ(d1)", "0.5"], ["κ(d2)", "0.001235"], ["λmax", "3.25"], ["λmin", "-0.125"],
                          ["|λmin/λmax|", "0.03846 (alarm ≥ 0.05)"], ["tr(H)/N", "0.01 ± 0.002"]]);
  });
  it("shows nothing without a panel, n/a for values that were not finite (sent as null)", () => {
    expect(trustRows({})).toEqual([]);
    expect(trustRows(undefined)).toEqual([]);
    const rows = trustRows({ kappa: [null, 1], lambda_max: 1, lambda_min: null, trace_over_n: 1 });
    expect(rows[0]).toEqual(["κ(d1)", "n/a"]);
    expect(rows[3]).toEqual(["λmin", "n/a"]);
    expect(rows[4]).toEqual(["|λmin/λmax|", "n/a (alarm ≥ 0.05)"]);
    expect(rows[5]).toEqual(["tr(H)/N", "1"]);
  });
  it("warns only when the kernel says the slice hides a saddle", () => {
    expect(hidesSaddle({ hides_saddle: true })).toBe(true);
    expect(hidesSaddle({ hides_saddle: false })).toBe(false);
    expect(hidesSaddle({})).toBe(false);
    expect(fmt(Infinity)).toBe("n/a");
  });
  it("shows a seed spread's kappas as ranges over its seeds, and in how many planes a saddle hides", () => {
    const t = { seeds: [0, 1, 2], kappa_range: [[0.1, 0.5], [-0.25, 0.75]], lambda_max: 2, lambda_min: -0.5,
                trace_over_n: 0.01, hides_saddle: true, hides_saddle_seeds: [0, 2] };
    expect(trustRows(t).slice(0, 3)).toEqual([["κ(d1), 3 seeds", "0.1 … 0.5"], ["κ(d2), 3 seeds", "-0.25 … 0.75"],
                                              ["λmax", "2"]]);
    expect(warningText(t)).toBe("strong negative curvature (|λmin| ≥ 5 % of λmax), yet both directions curve "
                                + "upwards in the planes of 2 of 3 seeds (0, 2): those slices hide a saddle, a "
                                + "direction along which the loss falls that the plot does not show.");
    expect(warningText({ kappa: [1, 2] })).toBe(WARNING);
    expect(warningText(undefined)).toBe(WARNING);
  });
  it("names the plane a spectrum's panel is about (a dashboard has two)", () => {
    expect(warningText({ kappa: [1, 2], of: "Filter-normalized random plane" })).toBe(
      "strong negative curvature (|λmin| ≥ 5 % of λmax), yet both plotted directions curve upwards: the slice "
      + "\"Filter-normalized random plane\" hides a saddle, a direction along which the loss falls that the plot "
      + "does not show.");
    expect(warningText({ kappa: [1, 2], of: "" })).toBe(WARNING);
  });
});

/** Just enough of a DOM element for fillTrustBox: children, hidden, dataset. */
function fakeBox() {
  return { children: [], hidden: false, dataset: {},
           replaceChildren() { this.children = []; }, append(...nodes) { this.children.push(...nodes); } };
}
const fakeH = (tag, attrs = {}, ...children) => ({ tag, ...attrs, children });

describe("fillTrustBox", () => {
  it("puts the reason in the panel's place when the kernel could not compute it", () => {
    const box = fakeBox();
    fillTrustBox(fakeH, box, { error: "RuntimeError: derivative for aten::sdpa_backward is not implemented",
                               detail: "RuntimeError: derivative for aten::sdpa_backward is not implemented. Use …" });
    expect(box.hidden).toBe(false);
    expect(box.dataset.failed).toBe("true");
    expect(box.children.map((c) => c.text)).toEqual(
      ["trust panel unavailable: RuntimeError: derivative for aten::sdpa_backward is not implemented"]);
    expect(box.children[0].class).toBe("lw-unavailable");
    expect(box.children[0].title).toContain("Use …");
  });
  it("a later panel replaces the reason; no panel hides the box", () => {
    const box = fakeBox();
    fillTrustBox(fakeH, box, { error: "RuntimeError: boom" });
    fillTrustBox(fakeH, box, { kappa: [1, 2], lambda_max: 3, lambda_min: 0.5, trace_over_n: 1 });
    expect(box.hidden).toBe(false);
    expect(box.dataset.failed).toBe("false");
    expect(box.children.some((c) => c.class === "lw-unavailable")).toBe(false);
    expect(box.children.length).toBe(2 + 6); // the (hidden) warning, "trust:", one item per row
    fillTrustBox(fakeH, box, {});
    expect(box.hidden).toBe(true);
    expect(box.children).toEqual([]);
  });
});

describe("a panel that grows", () => {
  it("shows … for what is still computing, n/a only for what came out not finite", () => {
    expect(trustRows({ kappa: [0.5, 0.25], partial: true })).toEqual(
      [["κ(d1)", "0.5"], ["κ(d2)", "0.25"], ["λmax", "…"], ["λmin", "…"], ["|λmin/λmax|", "…"], ["tr(H)/N", "…"]]);
    expect(trustRows({ kappa: [0.5, 0.25], partial: true, lambda_max: 2, lambda_min: null })).toEqual(
      [["κ(d1)", "0.5"], ["κ(d2)", "0.25"], ["λmax", "2"], ["λmin", "n/a"], ["|λmin/λmax|", "n/a (alarm ≥ 0.05)"],
       ["tr(H)/N", "…"]]);
  });
});

describe("an alarm a researcher can believe", () => {
  // the panel of the trained digits MLP: small negative curvature, the norm for trained networks, and no alarm
  const trained = { kappa: [0.000415, 0.000167], lambda_max: 0.9227, lambda_min: -0.00639, eig_ratio: 0.006926,
                    lambda_max_error: 0.0009227, lambda_min_error: 6.39e-6, saddle_threshold: 0.05,
                    negative_curvature: true, strong_negative_curvature: false, hides_saddle: false,
                    trace_over_n: 0.0001562, trace_over_n_stderr: 2.1e-6, trace_method: "hutch++", trace_samples: 30 };
  it("always shows |λmin/λmax| with the threshold, each eigenvalue ± its error bound, the trace's estimator", () => {
    expect(trustRows(trained)).toEqual([
      ["κ(d1)", "0.000415"], ["κ(d2)", "0.000167"], ["λmax", "0.9227 ± 9.2e-4"], ["λmin", "-0.00639 ± 6.4e-6"],
      ["|λmin/λmax|", "0.006926 (alarm ≥ 0.05)"], ["tr(H)/N, Hutch++ 30 HVPs", "0.0001562 ± 0.0000021"]]);
    expect(hidesSaddle(trained)).toBe(false);
  });
  it("names each tr(H)/N by its estimator and products (a page may show two)", () => {
    expect(traceLabel("hutch++", 99)).toBe("tr(H)/N, Hutch++ 99 HVPs");
    expect(traceLabel("hutchinson", 5)).toBe("tr(H)/N, Hutchinson 5 HVPs");
    expect(traceLabel(undefined, undefined)).toBe("tr(H)/N");
  });
  it("says what the alarm means and cites the threshold, with the panel's numbers", () => {
    const saddle = { ...trained, lambda_min: -0.5, eig_ratio: 0.5 / 0.9227, strong_negative_curvature: true,
                     hides_saddle: true };
    const text = warningText(saddle);
    expect(text).toBe("strong negative curvature: λmin = -0.5 is 54.2 % of λmax = 0.9227 (the alarm needs ≥ 5 %, "
                      + "beyond the eigenvalues' error bounds), yet both plotted directions curve upwards: this "
                      + "slice hides a saddle, a direction along which the loss falls that the plot does not show.");
    expect(warningText({ ...saddle, saddle_threshold: 0.1 })).toContain("the alarm needs ≥ 10 %");
    expect(trustRows({ ...saddle, saddle_threshold: 0.1 })[4]).toEqual(["|λmin/λmax|", "0.5419 (alarm ≥ 0.1)"]);
    expect(SADDLE_RATIO).toBe(0.05);
    const box = fakeBox();
    fillTrustBox(fakeH, box, saddle);
    expect(box.dataset.hidesSaddle).toBe("true");
    expect(box.children[0].hidden).toBe(false);
    expect(box.children[0].text).toBe(text);
    expect(box.children[1].title).toContain("|λmin| ≥ 5 % of λmax");
  });
});
