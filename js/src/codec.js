// Binary array codecs: the kernel sends float32 buffers (anywidget hands them over as DataView) plus a shape.

/** Float32Array view of a DataView / ArrayBuffer / typed array, honouring byteOffset (copy if misaligned). */
export function toFloat32(buf) {
  if (buf == null) return new Float32Array(0);
  if (buf instanceof Float32Array) return buf;
  let bytes;
  if (buf instanceof ArrayBuffer) bytes = new Uint8Array(buf);
  else if (ArrayBuffer.isView(buf)) bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  else throw new TypeError("expected a binary buffer");
  const n = Math.floor(bytes.byteLength / 4);
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const copy = new Uint8Array(n * 4);
  copy.set(bytes.subarray(0, n * 4));
  return new Float32Array(copy.buffer);
}

/** Decode base64 (offline pages) into a DataView, as the live widget would receive it. */
export function base64ToDataView(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return new DataView(out.buffer);
}

/** Replace {"$b64": ...} leaves of offline state with DataViews, recursively. */
export function reviveBuffers(value) {
  if (Array.isArray(value)) return value.map(reviveBuffers);
  if (value && typeof value === "object") {
    if (typeof value.$b64 === "string" && Object.keys(value).length === 1) return base64ToDataView(value.$b64);
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = reviveBuffers(v);
    return out;
  }
  return value;
}

/** Loss transform for display: log10 for positive finite values, identity otherwise; gaps are null. */
export function transform(v, logScale) {
  if (!Number.isFinite(v)) return null;
  if (!logScale) return v;
  return v > 0 ? Math.log10(v) : null;
}

/**
 * Row-major losses[i * ny + j] (i along alpha, j along beta) -> plotly matrix z[j][i] (rows are y = beta).
 * NaN / inf become null, which plotly draws as gaps.
 */
export function gridToRows(flat, nx, ny, logScale) {
  if (flat.length < nx * ny) throw new RangeError(`buffer holds ${flat.length} values, shape needs ${nx * ny}`);
  const z = new Array(ny);
  for (let j = 0; j < ny; j++) {
    const row = new Array(nx);
    for (let i = 0; i < nx; i++) row[i] = transform(flat[i * ny + j], logScale);
    z[j] = row;
  }
  return z;
}

/** Format a raw loss for hover text. */
export function formatLoss(v) {
  if (Number.isNaN(v)) return "nan";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  return Number(v.toPrecision(5)).toString();
}
