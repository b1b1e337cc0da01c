import { describe, expect, it } from "vitest";
import { WARNING, fmt, hidesSaddle, trustRows, warningText } from "../src/trust.js";

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
