import { describe, expect, it, vi } from "vitest";

vi.mock("../src/view.js", () => ({ createFrame: () => null }));  // the frame needs plotly and a DOM; not tested here
import { panelRows, spectrumFigure, traceHead } from "../src/spectrum.js";

const THEME = { background: "rgb(255, 255, 255)", foreground: "rgb(0, 0, 0)", muted: "rgb(9, 9, 9)",
                grid: "rgb(200, 200, 200)", fontFamily: "sans-serif" };
const empty = new DataView(new ArrayBuffer(0));

// a dashboard's spectrum view: its own trace (99 products) beside the plane's trust panel (30 products)
const state = {
  top: [0.9227], bottom: [-0.00639], grid: empty, density: empty, logScale: true,
  trace: { trace: 16.7, stderr: 0.2, per_parameter: 0.0001562, stderr_per_parameter: 1.9e-6, num_parameters: 107146,
           method: "hutch++", samples: 99 },
  trust: { kappa: [0.000415, 0.000167], lambda_max: 0.9227, lambda_min: -0.00639, eig_ratio: 0.006926,
           saddle_threshold: 0.05, trace_over_n: 0.0001571, trace_over_n_stderr: 2.1e-6, trace_method: "hutch++",
           trace_samples: 30, hides_saddle: false, of: "Filter-normalized random plane" },
};

describe("the spectrum view's two estimates of tr(H)/N", () => {
  it("labels each with its estimator and products", () => {
    const rows = panelRows(state);
    expect(rows.trace).toEqual([["tr(H)", "16.7 ± 0.2"], ["tr(H)/N", "0.0001562 ± 0.0000019"]]);
    expect(rows.trust.at(-1)).toEqual(["tr(H)/N, Hutch++ 30 HVPs", "0.0001571 ± 0.0000021"]);
    expect(rows.trust).toContainEqual(["|λmin/λmax|", "0.006926 (alarm ≥ 0.05)"]);
    expect(traceHead(state.trace)).toBe("trace (Hutch++ 99 HVPs)");
    expect(traceHead({})).toBe("trace");
  });
  it("names the estimator in the trace marker's hover", () => {
    const { data } = spectrumFigure(state, THEME);
    const tr = data.find((t) => t.name === "tr(H)/N");
    expect(tr.hovertemplate).toContain("tr(H)/N, Hutch++ 99 HVPs");
  });
});
