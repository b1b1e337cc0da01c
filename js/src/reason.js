// Why a part of a view is missing: a short reason shown in that part's place (a trust panel the kernel could not
// compute, a spectrum that failed), so the rest of the view stays as it is.  Pure functions, no DOM.

export const REASON_CHARS = 200; // one readable line, not a traceback

export const REASON_CSS = `
.lw-unavailable { color: var(--lw-muted); font-style: italic; overflow-wrap: anywhere; }
`;

/** The first line of a failure message ("RuntimeError: ..."), at most `limit` characters; "" without one. */
export function shortReason(text, limit = REASON_CHARS) {
  const line = (typeof text === "string" ? text : "").trim().split("\n")[0].trim();
  return line.length <= limit ? line : `${line.slice(0, limit - 1).trimEnd()}…`;
}

/** "<what> unavailable: <reason>", or "" when there is no reason. */
export function unavailableText(what, reason) {
  const r = shortReason(reason);
  return r ? `${what} unavailable: ${r}` : "";
}

/** A trust panel dict the kernel sent as {error: reason}: the text in the panel's place; "" for a real panel. */
export function trustFailure(t) {
  return unavailableText("trust panel", t && t.error);
}

/** A spectrum view in its error state: the text in its side panel; "" otherwise. */
export function spectrumFailure(s) {
  return s && s.state === "error" ? unavailableText("spectrum", s.error) : "";
}

/** The element that stands in the missing part's place (`h`: the frame's element builder); `detail`, the whole
 *  message (its hint is often past the first line), on hover. */
export function reasonBox(h, text, detail) {
  return h("span", { class: "lw-unavailable", role: "note", text,
                     title: typeof detail === "string" && detail ? detail : undefined });
}
