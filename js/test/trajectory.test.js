import { describe, expect, it, vi } from "vitest";
import { measuresText, trajectoryFigure } from "../src/trajectory.js";

vi.mock("../src/view.js", () => ({ createFrame: () => null }));  // the frame needs plotly and a DOM; not tested here

const THEME = { background: "rgb(255, 255, 255)", foreground: "rgb(0, 0, 0)", muted: "rgb(9, 9, 9)",
                grid: "rgb(200, 200, 200)", fontFamily: "sans-serif" };
const bytes = (values) => new DataView(new Float32Array(values).buffer);

function state(extra = {}) {
  // two runs: run 0 has snapshots 0..2, run 1 has 3..4; coords row-major [5, 2]
  return { coords: bytes([0, 0, 1, 1, 2, 4, 5, 5, 6, 7]), shape: [5, 2], steps: bytes([0, 1, 2, 0, 1]),
           losses: bytes([1, 0.1, NaN, 10, 1]), run: bytes([0, 0, 0, 1, 1]), labels: ["sgd", "<b>adam</b>"],
           measures: { method: "pca", trustworthiness: 0.98765, n_neighbors: 2, reconstruction_error: 0.25,
                       explained_variance: [0.5, 0.25], strides: [1, 2] }, colorBy: "step",
           axisNames: { pca: "PC", umap: "UMAP", autoencoder: "AE" }, ...extra };  // the kernel's controls spec
}

describe("trajectoryFigure", () => {
  it("draws one line per run through its snapshots, coloured by step", () => {
    const { data, layout } = trajectoryFigure(state(), THEME);
    expect(data.length).toBe(2);
    expect(data[0].type).toBe("scatter");
    expect(data[0].x).toEqual([0, 1, 2]);
    expect(data[0].y).toEqual([0, 1, 4]);
    expect(data[1].x).toEqual([5, 6]);
    expect(data[0].marker.color).toEqual([0, 1, 2]);
    expect(data[1].name).toBe("&lt;b&gt;adam&lt;/b&gt;");  // labels stay text
    expect(data[0].text[2]).toContain("loss nan");
    expect(layout.xaxis.title.text).toBe("PC 1 (50.0% of variance)");
    expect(layout.showlegend).toBe(true);
  });

  it("colours by log10 loss with NaN as no colour, and draws 3-D", () => {
    const s = state({ coords: bytes([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]), shape: [5, 3], colorBy: "loss",
                      measures: { method: "umap", trustworthiness: 0.9, n_neighbors: 2 } });
    const { data, layout } = trajectoryFigure(s, THEME);
    expect(data[0].type).toBe("scatter3d");
    expect(data[0].z).toEqual([0, 1, 2]);
    expect(data[0].marker.color[0]).toBeCloseTo(0, 12);
    expect(data[0].marker.color[1]).toBeCloseTo(-1, 6);
    expect(data[0].marker.color[2]).toBeNull();
    expect(layout.scene.zaxis.title.text).toBe("UMAP 3");
  });
});

describe("measuresText", () => {
  it("says trustworthiness with k, the error or why there is none, the variance and thinning", () => {
    const text = measuresText(state().measures);
    expect(text).toContain("trustworthiness 0.988 (k = 2)");
    expect(text).toContain("reconstruction error 0.25 (in-sample)");
    expect(text).toContain("50.0% + 25.0% = 75.0%");
    expect(text).toContain("1 / 2");
    const none = measuresText({ trustworthiness: 0.5, n_neighbors: 3, reconstruction_error: null,
                                reconstruction_reason: "skipped" });
    expect(none).toContain("reconstruction error n/a: skipped");
    expect(measuresText({})).toBe("");
  });
});
