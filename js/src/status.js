// The status line: the kernel sends it structured (Status.to_json(): text, then named notes); rendered here.

export const SEPARATOR = " · ";

/** "<text> · <note> · <note>" of a status {text, notes: [[key, text], ...], stage}; "" without one. */
export function statusText(line) {
  if (!line || typeof line !== "object") return "";
  const notes = Array.isArray(line.notes) ? line.notes.map((n) => (Array.isArray(n) ? n[1] : n)) : [];
  return [line.text, ...notes].filter((p) => typeof p === "string" && p).join(SEPARATOR);
}
