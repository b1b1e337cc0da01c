import { describe, expect, it } from "vitest";
import { WARNING, fillTrustBox, fmt, hidesSaddle, trustRows, warningText } from "../src/trust.js";

describe("trustRows", () => {
  it("lists the curvature of each direction, then the eigenvalues and tr(H)/N with its error bar", () => {
    const rows = trustRows({ kappa: [0.5, 0.0012346], lambda_max: 3.25, lambda_min: -0.125, trace_over_n: 0.01,
                             trace_over_n_stderr: 0.002, hides_saddle: true });
    expect(rows).toEqual([["κ(d1)", "0.5"], ["κ(d2)", "0.001235"], ["λmax", "3.25"], ["λmin", "-0.125"],
                          ["tr(H)/N", "0.01 ± 0.002"]]);
  });
  it("shows nothing without a panel, n/a for values that were not finite (sent as null)", () => {
    expect(trustRows({})).toEqual([]);
    expect(trustRows(undefined)).toEqual([]);
    const rows = trustRows({ kappa: [null, 1], lambda_max: 1, lambda_min: null, trace_over_n: 1 });
    expect(rows[0]).toEqual(["κ(d1)", "n/a"]);
    expect(rows[3]).toEqual(["λmin", "n/a"]);
    expect(rows[4]).toEqual(["tr(H)/N", "1"]);
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
    expect(warningText(t)).toBe("λmin < 0 but both directions curve upwards in the planes of 2 of 3 seeds (0, 2): "
                                + "those slices hide a saddle.");
    expect(warningText({ kappa: [1, 2] })).toBe(WARNING);
  });
  it("names the plane a spectrum's panel is about (a dashboard has two)", () => {
    expect(warningText({ kappa: [1, 2], of: "Filter-normalized random plane" })).toBe(
      "λmin < 0 but both plotted directions curve upwards: the slice \"Filter-normalized random plane\" hides a "
      + "saddle.");
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
    expect(box.children.length).toBe(2 + 5); // the (hidden) warning, "trust:", one item per row
    fillTrustBox(fakeH, box, {});
    expect(box.hidden).toBe(true);
    expect(box.children).toEqual([]);
  });
});

describe("a panel that grows", () => {
  it("shows … for what is still computing, n/a only for what came out not finite", () => {
    expect(trustRows({ kappa: [0.5, 0.25], partial: true })).toEqual(
      [["κ(d1)", "0.5"], ["κ(d2)", "0.25"], ["λmax", "…"], ["λmin", "…"], ["tr(H)/N", "…"]]);
    expect(trustRows({ kappa: [0.5, 0.25], partial: true, lambda_max: 2, lambda_min: null })).toEqual(
      [["κ(d1)", "0.5"], ["κ(d2)", "0.25"], ["λmax", "2"], ["λmin", "n/a"], ["tr(H)/N", "…"]]);
  });
});
