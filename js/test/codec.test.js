import { describe, expect, it } from "vitest";
import { base64ToDataView, formatLoss, gridToRows, reviveBuffers, toFloat32, transform } from "../src/codec.js";

const f32bytes = (values) => new Uint8Array(new Float32Array(values).buffer);

describe("toFloat32", () => {
  it("reads a DataView at a non-zero, aligned byteOffset without copying", () => {
    const buf = new ArrayBuffer(24);
    new Float32Array(buf).set([9, 1.5, -2, NaN, Infinity, 7]);
    const view = new DataView(buf, 4, 16);
    const out = toFloat32(view);
    expect(out.length).toBe(4);
    expect(out[0]).toBe(1.5);
    expect(out[1]).toBe(-2);
    expect(Number.isNaN(out[2])).toBe(true);
    expect(out[3]).toBe(Infinity);
    expect(out.buffer).toBe(buf);
  });
  it("copies a misaligned view instead of throwing", () => {
    const raw = new Uint8Array(9);
    raw.set(f32bytes([3.25, -1]), 1);
    const out = toFloat32(new DataView(raw.buffer, 1, 8));
    expect(Array.from(out)).toEqual([3.25, -1]);
  });
  it("accepts ArrayBuffer, typed arrays and null", () => {
    expect(Array.from(toFloat32(new Float32Array([1, 2]).buffer))).toEqual([1, 2]);
    expect(Array.from(toFloat32(f32bytes([4])))).toEqual([4]);
    expect(toFloat32(null).length).toBe(0);
    expect(() => toFloat32("abc")).toThrow(TypeError);
  });
});

describe("base64 / reviveBuffers", () => {
  it("round-trips float32 bytes as the offline page stores them", () => {
    const b64 = Buffer.from(f32bytes([0.5, NaN, -Infinity])).toString("base64");
    const out = toFloat32(base64ToDataView(b64));
    expect(out[0]).toBe(0.5);
    expect(Number.isNaN(out[1])).toBe(true);
    expect(out[2]).toBe(-Infinity);
  });
  it("revives nested {$b64} leaves only", () => {
    const b64 = Buffer.from(f32bytes([2])).toString("base64");
    const s = reviveBuffers({ a: { $b64: b64 }, c: [{ losses: { $b64: b64 }, label: "x" }], n: 3, t: "t",
                              keep: { $b64: b64, other: 1 } });
    expect(s.a).toBeInstanceOf(DataView);
    expect(toFloat32(s.c[0].losses)[0]).toBe(2);
    expect(s.c[0].label).toBe("x");
    expect(s.n).toBe(3);
    expect(s.keep.other).toBe(1);
    expect(s.keep.$b64).toBe(b64);
  });
});

describe("transform and gridToRows", () => {
  it("log10 for positive values, gaps (null) for non-finite and non-positive on log scale", () => {
    expect(transform(100, true)).toBeCloseTo(2, 12);
    expect(transform(0, true)).toBeNull();
    expect(transform(-1, false)).toBe(-1);
    expect(transform(NaN, false)).toBeNull();
    expect(transform(Infinity, false)).toBeNull();
  });
  it("turns row-major losses[i, j] (i along alpha) into plotly z[j][i]", () => {
    // nx = 2 (alpha), ny = 3 (beta): losses[i*3 + j] = 10*i + j
    const flat = new Float32Array([0, 1, 2, 10, 11, NaN]);
    const z = gridToRows(flat, 2, 3, false);
    expect(z.length).toBe(3);
    expect(z.map((r) => r.length)).toEqual([2, 2, 2]);
    expect(z[0]).toEqual([0, 10]);
    expect(z[1]).toEqual([1, 11]);
    expect(z[2]).toEqual([2, null]);
  });
  it("rejects a buffer smaller than its shape", () => {
    expect(() => gridToRows(new Float32Array(3), 2, 2, false)).toThrow(RangeError);
  });
  it("formats losses for hover", () => {
    expect(formatLoss(0.123456789)).toBe("0.12346");
    expect(formatLoss(NaN)).toBe("nan");
    expect(formatLoss(Infinity)).toBe("inf");
    expect(formatLoss(-Infinity)).toBe("-inf");
  });
});
