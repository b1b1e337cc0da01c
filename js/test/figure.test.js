import { describe, expect, it } from "vitest";
import { curveFigure, escapeForPlotly, logTicks, placeBesideColorbar, surfaceFigure, UIREVISION, withAlpha, zTicks } from "../src/figure.js";

const THEME = { background: "rgb(255, 255, 255)", foreground: "rgb(0, 0, 0)", muted: "rgb(9, 9, 9)",
                grid: "rgb(200, 200, 200)", fontFamily: "sans-serif" };
const bytes = (values) => new DataView(new Float32Array(values).buffer);

function surfaceState(extra = {}) {
  // 3 x 2 grid: losses[i, j] = 10^(i + j), one NaN at (2, 1)
  return { losses: bytes([1, 10, 10, 100, 100, NaN]), alphas: bytes([-1, 0, 1]), betas: bytes([-0.5, 0.5]),
           shape: [3, 2], done: 6, logScale: true, view: "contour", title: "t", ...extra };
}

describe("surfaceFigure", () => {
  it("draws log10 loss with alpha on x, beta on y, NaN as a gap", () => {
    const { data, layout } = surfaceFigure(surfaceState(), THEME);
    const t = data[0];
    expect(t.type).toBe("contour");
    expect(t.x).toEqual([-1, 0, 1]);
    expect(t.y).toEqual([-0.5, 0.5]);
    expect(t.z.length).toBe(2);
    expect(t.z[0][0]).toBeCloseTo(0, 12);
    expect(t.z[0][2]).toBeCloseTo(2, 6);
    expect(t.z[1][1]).toBeCloseTo(2, 6);
    expect(t.z[1][2]).toBeNull();
    expect(t.text[1][2]).toBe("nan");
    expect(t.text[0][1]).toBe("10");
    expect(t.hovertemplate).toContain("α");
    expect(t.hovertemplate).toContain("β");
    expect(t.hovertemplate).toContain("loss");
    expect(layout.uirevision).toBe(UIREVISION);
    expect(data[1].type).toBe("scatter"); // the model's own weights at (0, 0)
    expect(layout.paper_bgcolor).toBe(THEME.background);
  });
  it("sends the grid's extent as explicit axis ranges (heatmap cells reach half a step beyond)", () => {
    const c = surfaceFigure(surfaceState(), THEME).layout;
    expect(c.xaxis.range).toEqual([-1, 1]);
    expect(c.yaxis.range).toEqual([-0.5, 0.5]);
    expect(c.xaxis.autorange).toBe(false);
    expect(c.yaxis.scaleanchor).toBe("x");
    const h = surfaceFigure(surfaceState({ view: "heatmap" }), THEME).layout;
    expect(h.xaxis.range).toEqual([-1.5, 1.5]);
    expect(h.yaxis.range).toEqual([-1, 1]);
  });
  it("asks for a fresh plot only when the extent changes (plotly keeps stale constrained domains)", () => {
    const a = surfaceFigure(surfaceState(), THEME).replotKey;
    expect(surfaceFigure(surfaceState({ logScale: false, losses: bytes([2, 2, 2, 2, 2, 2]) }), THEME).replotKey)
      .toBe(a); // new values on the same extent: react, a zoom survives
    expect(surfaceFigure(surfaceState({ alphas: bytes([-0.5, 0, 0.5]) }), THEME).replotKey).not.toBe(a);
  });
  it("linear scale keeps raw losses", () => {
    const { data } = surfaceFigure(surfaceState({ logScale: false }), THEME);
    expect(data[0].z[1][0]).toBe(10);
    expect(data[0].colorbar.title.text).toBe("loss");
  });
  it("switches trace type with the view and keeps the camera through uirevision", () => {
    expect(surfaceFigure(surfaceState({ view: "heatmap" }), THEME).data[0].type).toBe("heatmap");
    const s = surfaceFigure(surfaceState({ view: "surface" }), THEME);
    expect(s.data[0].type).toBe("surface");
    expect(s.data.length).toBe(1);
    expect(s.layout.scene.uirevision).toBe(UIREVISION);
  });
  it("labels rows that are not computed yet as pending while streaming", () => {
    const { data } = surfaceFigure(surfaceState({ done: 2, state: "partial" }), THEME); // first row (i = 0) only
    expect(data[0].text[0][0]).toBe("1");
    expect(data[0].text[0][1]).toBe("10 (preview, pending)");
    expect(data[0].text[1][2]).toBe("nan (preview, pending)");
    // a preview or a finished grid has no pending rows, whatever _done says
    for (const state of ["preview", "done"]) {
      expect(surfaceFigure(surfaceState({ done: 0, state }), THEME).data[0].text[1][2]).toBe("nan");
    }
  });
  it("puts no user string into the figure as HTML", () => {
    const { layout } = surfaceFigure(surfaceState({ title: "<b>x</b>" }), THEME);
    expect(JSON.stringify(layout)).not.toContain("<b>");
  });
});

describe("curveFigure", () => {
  const curves = [
    { label: "interpolation", kind: "interpolation", alphas: bytes([0, 0.5, 1]), losses: bytes([2, NaN, 0.5]) },
    { label: "<i>test</i>", kind: "interpolation", alphas: bytes([0, 0.5, 1]), losses: bytes([3, 1, -1]) },
  ];
  it("one trace per curve, legend when several, gaps for NaN", () => {
    const { data, layout } = curveFigure({ curves, logScale: false, title: "" }, THEME);
    expect(data.length).toBe(2);
    expect(data[0].y).toEqual([2, null, 0.5]);
    expect(data[0].text[1]).toBe("nan");
    expect(layout.showlegend).toBe(true);
    expect(layout.yaxis.type).toBe("linear");
    expect(data[1].name).toBe("&lt;i&gt;test&lt;/i&gt;");
    expect(layout.xaxis.title.text).toContain("0 = start");
  });
  it("log axis drops non-positive values instead of drawing garbage", () => {
    const { data, layout } = curveFigure({ curves, logScale: true, title: "" }, THEME);
    expect(layout.yaxis.type).toBe("log");
    expect(data[1].y).toEqual([3, 1, null]);
    expect(curveFigure({ curves: curves.slice(0, 1), logScale: true }, THEME).layout.showlegend).toBe(false);
  });
  it("escapes plotly's HTML subset", () => {
    expect(escapeForPlotly("a<b>&")).toBe("a&lt;b&gt;&amp;");
  });
});

describe("surfaceFigure path overlay", () => {
  it("draws the projected trajectory with steps and recorded losses on hover", () => {
    const s = surfaceState({ path: bytes([-1, -0.5, 0, 0.25, 1, 0.5]), pathSteps: [0, 5, 10],
                             pathLosses: bytes([2.5, 0.5, NaN]) });
    const { data } = surfaceFigure(s, THEME);
    const path = data.find((t) => t.name === "path");
    expect(path.mode).toBe("lines+markers");
    expect(path.x).toEqual([-1, 0, 1]);
    expect(path.y).toEqual([-0.5, 0.25, 0.5]);
    expect(path.customdata.map((c) => c[0])).toEqual([0, 5, 10]);
    expect(path.customdata[0][1]).toBe("2.5");
    expect(path.customdata[2][1]).toBe("nan");
    expect(path.hovertemplate).toContain("step");
  });
  it("draws no path without one, and none in the 3-D view", () => {
    expect(surfaceFigure(surfaceState(), THEME).data.some((t) => t.name === "path")).toBe(false);
    const s3 = surfaceState({ view: "surface", path: bytes([0, 0, 1, 1]) });
    expect(surfaceFigure(s3, THEME).data.some((t) => t.name === "path")).toBe(false);
  });
});

describe("surfaceFigure model marks", () => {
  it("marks the models of a plane through models, labelled, with their loss on hover", () => {
    const marks = [{ label: "model", alpha: 0, beta: 0, loss: 0.5 }, { label: "model_b", alpha: 1, beta: 0, loss: 2.5 },
                   { label: "a<b", alpha: 0.25, beta: 1, loss: null }];
    const { data } = surfaceFigure(surfaceState({ marks }), THEME);
    const m = data.find((t) => t.name === "models");
    expect(m.x).toEqual([0, 1, 0.25]);
    expect(m.y).toEqual([0, 0, 1]);
    expect(m.text).toEqual(["model", "model_b", "a&lt;b"]);
    expect(m.mode).toBe("markers+text");
    expect(m.customdata).toEqual(["0.5", "2.5", "nan"]);
    expect(m.hovertemplate).toContain("loss %{customdata}");
    expect(data.some((t) => t.name === "model")).toBe(false); // the model is one of the marks
  });
  it("draws no marks without them, and none in the 3-D view", () => {
    expect(surfaceFigure(surfaceState({ marks: [] }), THEME).data.some((t) => t.name === "models")).toBe(false);
    const marks = [{ label: "model", alpha: 0, beta: 0, loss: 1 }];
    expect(surfaceFigure(surfaceState({ view: "surface", marks }), THEME).data.some((t) => t.name === "models"))
      .toBe(false);
  });
});

describe("surfaceFigure seed spread", () => {
  it("shows the median with the IQR on hover", () => {
    const { data } = surfaceFigure(surfaceState({ iqr: bytes([0.5, 1, 1, 2, 2, 3]) }), THEME);
    expect(data[0].text[0][1]).toBe("10 (median; IQR 1)"); // text[j][i] is cell (i=1, j=0)
  });
});

describe("plot details", () => {
  it("labels decades only on a log axis that spans one or more", () => {
    expect(logTicks([0.01, 0.5, 3])).toEqual({ dtick: 1, exponentformat: "power" });
    expect(logTicks([0.2, 0.5, null, -1, NaN])).toEqual({});
    expect(logTicks([])).toEqual({});
  });
  it("turns a theme colour into a translucent one", () => {
    expect(withAlpha("rgb(230, 230, 230)", 0.45)).toBe("rgba(230, 230, 230, 0.45)");
    expect(withAlpha("#fff", 0.5)).toBe("#fff");
  });
});

describe("placeBesideColorbar", () => {
  it("centres a square plot and puts the colorbar right after it", () => {
    const layout = { margin: { l: 60, r: 20, t: 28, b: 50 }, xaxis: {} };
    const trace = { colorbar: { thickness: 14 } };
    placeBesideColorbar(layout, trace, [-1, 1], [-1, 1], { width: 880, height: 478 });
    const w = 800, h = 400;  // inside the margins
    const [a, b] = layout.xaxis.domain;
    expect((b - a) * w).toBeCloseTo(h, 6);  // square: equal units on both axes
    expect(a * w).toBeCloseTo((w - 90 - h) / 2, 6);  // centred with the colorbar
    expect(trace.colorbar.x * w).toBeCloseTo(b * w + 12, 6);
    expect(trace.colorbar.thickness).toBe(14);
  });
  it("leaves a tiny plot to plotly", () => {
    const layout = { margin: { l: 60, r: 20, t: 28, b: 50 }, xaxis: {} };
    placeBesideColorbar(layout, {}, [-1, 1], [-1, 1], { width: 150, height: 100 });
    expect(layout.xaxis.domain).toBeUndefined();
  });
});

describe("narrow views", () => {
  it("put the colorbar under a plot narrower than a cell (a side panel)", () => {
    const layout = { margin: { l: 60, r: 20, t: 28, b: 50 }, xaxis: {} };
    const trace = { colorbar: { thickness: 14, title: { text: "log10 loss" } } };
    placeBesideColorbar(layout, trace, [-1, 1], [-1, 1], { width: 300, height: 400 });
    expect(trace.colorbar.orientation).toBe("h");
    expect(layout.xaxis.domain).toBeUndefined();  // the plot keeps the whole width
    expect(layout.margin.r).toBeLessThan(20);
  });
  it("give a 3-D surface the whole width of a side panel", () => {
    const s = { losses: new Float32Array(4).buffer, alphas: new Float32Array([0, 1]).buffer,
                betas: new Float32Array([0, 1]).buffer, shape: [2, 2], logScale: false, view: "surface" };
    const fig = surfaceFigure(s, THEME, { width: 300, height: 400 });
    expect(fig.data[0].colorbar.orientation).toBe("h");
    expect(surfaceFigure(s, THEME, { width: 900, height: 400 }).data[0].colorbar.orientation).toBeUndefined();
  });
});

describe("zTicks", () => {
  it("gives round ticks inside the range, none in its lowest sixth (where the alpha axis label sits)", () => {
    const { tickmode, tickvals } = zTicks([[-2.6, -1], [0.3, 1.05], [NaN, null]]);
    expect(tickmode).toBe("array");
    expect(tickvals).toEqual([-1, 0, 1]);
    const lo = -2.6, hi = 1.05;
    for (const v of tickvals) { expect(v).toBeGreaterThanOrEqual(lo + (hi - lo) / 6); expect(v).toBeLessThanOrEqual(hi); }
  });
  it("leaves plotly's ticks when the data are flat or empty", () => {
    expect(zTicks([[1, 1]])).toEqual({});
    expect(zTicks([[NaN]])).toEqual({});
  });
  it("is what the 3-D view's z axis uses", () => {
    const { layout } = surfaceFigure(surfaceState({ view: "surface" }), THEME, { width: 800, height: 500 });
    expect(layout.scene.zaxis.tickvals).toEqual(zTicks([[0, 1], [1, 2], [2, NaN]]).tickvals);
  });
});

describe("curveFigure with a metric", () => {
  const bytes = (values) => new DataView(new Float32Array(values).buffer);
  const curves = [
    { label: "a", kind: "line", alphas: bytes([0, 1]), losses: bytes([1, 2]), metrics: { accuracy: bytes([0.9, 0.5]) } },
    { label: "b", kind: "line", alphas: bytes([0, 1]), losses: bytes([3, 4]), metrics: {} },
  ];
  it("draws the metric of the curves that have it, linearly, under its name", () => {
    const { data, layout } = curveFigure({ curves, logScale: true, show: "accuracy" }, THEME);
    expect(data.map((t) => t.name)).toEqual(["a"]);
    expect(data[0].y[0]).toBeCloseTo(0.9, 6);
    expect(layout.yaxis.type).toBe("linear");
    expect(layout.yaxis.title.text).toBe("accuracy");
    expect(data[0].hovertemplate).toContain("accuracy %{text}");
  });
  it("draws the loss of every curve otherwise", () => {
    const { data, layout } = curveFigure({ curves, logScale: true, show: "loss" }, THEME);
    expect(data.map((t) => t.y)).toEqual([[1, 2], [3, 4]]);
    expect(layout.yaxis.type).toBe("log");
  });
});

describe("curveFigure of a Bézier curve", () => {
  const bytes = (values) => new DataView(new Float32Array(values).buffer);
  it("labels the axis with t from the model to model_b", () => {
    const c = (label) => ({ label, kind: "connect", alphas: bytes([0, 1]), losses: bytes([1, 1]), metrics: {} });
    expect(curveFigure({ curves: [c("Bézier curve"), c("straight line")] }, THEME).layout.xaxis.title.text)
      .toBe("t  (0 = model, 1 = model_b)");
    const line = { label: "l", kind: "line", alphas: bytes([0, 1]), losses: bytes([1, 1]) };
    expect(curveFigure({ curves: [line, c("b")] }, THEME).layout.xaxis.title.text).toBe("α, t");
  });
});
