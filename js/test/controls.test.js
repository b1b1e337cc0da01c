import { describe, expect, it } from "vitest";
import { CURVATURE_LABEL, showOptions, shownQuantity, surfaceControls, viewControls } from "../src/controls.js";
import { surfaceFigure } from "../src/figure.js";

const THEME_FOR_SHOW = { background: "rgb(255, 255, 255)", foreground: "rgb(0, 0, 0)", muted: "rgb(9, 9, 9)",
                         grid: "rgb(200, 200, 200)", fontFamily: "sans-serif" };

describe("viewControls", () => {
  it("gives each control the kernel's limits and choices, and the traits that redraw", () => {
    const c = viewControls({ limits: { steps: [3, 401] }, choices: { show: [["loss", "loss"], ["acc", "acc"]] },
                             redraw: ["_curves"] });
    expect(c.limits("steps")).toEqual({ min: 3, max: 401 });
    expect(c.limits("seed")).toEqual({});
    expect(c.choices("show")).toEqual([["loss", "loss"], ["acc", "acc"]]);
    expect(c.choices("normalization")).toEqual([]);
    expect(c.redraw).toEqual(["_curves"]);
    expect(viewControls(undefined).redraw).toEqual([]);
  });
});

describe("surfaceControls", () => {
  it("takes the limits, normalizations and the kind's controls from the kernel", () => {
    const c = surfaceControls({
      kind: { name: "hessian", controls: [] },
      limits: { resolution: [3, 99], span: [0.5, 7], seeds: [1, 4] },
      normalizations: ["filter", "none"],
    });
    expect(c.kind.name).toBe("hessian");
    expect(c.kind.controls).toEqual([]);
    expect(c.resolution).toEqual([3, 99]);
    expect(c.span).toEqual([0.5, 7]);
    expect(c.seeds).toEqual([1, 4]);
    expect(c.normalizations).toEqual(["filter", "none"]);
  });
  it("falls back to a random plane's controls for a state without them (an older saved notebook)", () => {
    const c = surfaceControls(undefined);
    expect(c.kind.controls).toEqual(["seed", "normalization", "seeds"]);
    expect(c.resolution).toEqual([5, 201]);
  });
});

describe("what the surface plot shows", () => {
  const bytes = (values) => new DataView(new Float32Array(values).buffer);
  const base = { losses: bytes([1, 2]), alphas: bytes([0, 1]), betas: bytes([0]), shape: [2, 1], logScale: true,
                 state: "partial", done: 1 };
  it("offers the loss, each metric and the curvature map (offline: only when computed)", () => {
    const q = ["loss", "accuracy", "curvature"];
    expect(showOptions(q).map(([v]) => v)).toEqual(q);
    expect(showOptions(q)[2][1]).toBe(`curvature ${CURVATURE_LABEL}`);
    expect(showOptions(q, { offline: true }).map(([v]) => v)).toEqual(["loss", "accuracy"]);
    expect(showOptions(q, { offline: true, hasCurvature: true }).map(([v]) => v)).toEqual(q);
  });
  it("draws a metric linearly under its own name, the map on its own grid, else the loss", () => {
    const acc = bytes([0.5, 0.75]);
    const m = shownQuantity(base, "accuracy", { accuracy: acc }, {});
    expect(m.losses).toBe(acc);
    expect(m.label).toBe("accuracy");
    expect(m.logScale).toBe(false);
    const curv = { ratio: bytes([0.1, 0.2, 0.3, 0.4]), alphas: bytes([0, 1]), betas: bytes([0, 1]), shape: [2, 2] };
    const c = shownQuantity(base, "curvature", {}, curv);
    expect(c.shape).toEqual([2, 2]);
    expect(c.label).toBe(CURVATURE_LABEL);
    expect(c.state).toBe("done");
    expect(shownQuantity(base, "curvature", {}, {})).toBe(base);  // not computed yet: the loss stays
    expect(shownQuantity(base, "f1", {}, {})).toBe(base);
    const { data, layout } = surfaceFigure(m, THEME_FOR_SHOW);
    expect(data[0].colorbar.title.text).toBe("accuracy");
    expect(data[0].hovertemplate).toContain("accuracy %{text}");
    expect(data[0].z).toEqual([[0.5, 0.75]]);
    expect(layout).toBeTruthy();
  });
});
