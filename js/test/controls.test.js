import { describe, expect, it } from "vitest";
import { surfaceControls } from "../src/controls.js";

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
