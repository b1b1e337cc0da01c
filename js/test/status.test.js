import { describe, expect, it } from "vitest";
import { statusText } from "../src/status.js";

describe("statusText", () => {
  it("renders the kernel's structured status: the text, then its notes in order", () => {
    expect(statusText({ text: "21×21 in 0.40 s", stage: "done",
                        notes: [["directions", "random plane, seed 0"], ["trust", "⚠ this slice hides a saddle"]] }))
      .toBe("21×21 in 0.40 s · random plane, seed 0 · ⚠ this slice hides a saddle");
    expect(statusText({ text: "computing 5×5…", notes: [] })).toBe("computing 5×5…");
  });
  it("is empty without a status, and skips empty parts", () => {
    expect(statusText(undefined)).toBe("");
    expect(statusText({})).toBe("");
    expect(statusText({ text: "", notes: [["gaps", "1 NaN point drawn as gaps"]] })).toBe("1 NaN point drawn as gaps");
  });
});
