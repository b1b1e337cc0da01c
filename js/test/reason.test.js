import { describe, expect, it } from "vitest";
import { REASON_CHARS, reasonBox, shortReason, spectrumFailure, trustFailure, unavailableText } from "../src/reason.js";

describe("reasons in a missing part's place", () => {
  it("keeps the first line of a message, trimmed, at most REASON_CHARS characters", () => {
    expect(shortReason("RuntimeError: derivative for aten::x is not implemented\n  File ...\n")).toBe(
      "RuntimeError: derivative for aten::x is not implemented");
    const long = shortReason(`ValueError: ${"x".repeat(500)}`);
    expect(long.length).toBe(REASON_CHARS);
    expect(long.endsWith("…")).toBe(true);
    expect(shortReason("")).toBe("");
    expect(shortReason(undefined)).toBe("");
    expect(unavailableText("trust panel", "  \n")).toBe("");
  });
  it("says the trust panel is unavailable only for a panel the kernel sent as {error}", () => {
    expect(trustFailure({ error: "RuntimeError: no double backward\nmore", of: "plane" })).toBe(
      "trust panel unavailable: RuntimeError: no double backward");
    expect(trustFailure({ kappa: [1, 2], lambda_max: 1 })).toBe("");
    expect(trustFailure({})).toBe("");
    expect(trustFailure(undefined)).toBe("");
  });
  it("says the spectrum is unavailable only in the view's error state", () => {
    expect(spectrumFailure({ state: "error", error: "RuntimeError: boom" })).toBe("spectrum unavailable: RuntimeError: boom");
    expect(spectrumFailure({ state: "done", error: "k=99 is outside 1..50; clamped to 50" })).toBe("");
    expect(spectrumFailure({ state: "error", error: "" })).toBe("");
  });
  it("shows the reason as text, never as HTML, and the whole message on hover", () => {
    const h = (tag, attrs) => ({ tag, ...attrs });
    expect(reasonBox(h, "<b>x</b>")).toMatchObject({ tag: "span", class: "lw-unavailable", role: "note",
                                                     text: "<b>x</b>", title: undefined });
    expect(reasonBox(h, "short", "short\nand the hint").title).toBe("short\nand the hint");
  });
});
