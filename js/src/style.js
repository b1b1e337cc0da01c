// Widget styles, injected once into the light DOM (plotly does not work inside a shadow root).
const CSS = `
.lw-widget { --lw-bg: var(--jp-layout-color0, #fff); --lw-fg: var(--jp-ui-font-color1, #212121);
  --lw-muted: var(--jp-ui-font-color2, #757575); --lw-border: var(--jp-border-color2, #e0e0e0);
  --lw-accent: var(--jp-brand-color1, #1976d2); --lw-error: var(--jp-error-color1, #d32f2f);
  --lw-input-bg: var(--jp-input-background, var(--lw-bg));
  font-family: var(--jp-ui-font-family, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: 13px; color: var(--lw-fg); background: var(--lw-bg); border: 1px solid var(--lw-border);
  border-radius: 6px; padding: 10px 12px 8px; box-sizing: border-box; width: 100%; min-width: 240px; }
@media (prefers-color-scheme: dark) { .lw-widget[data-offline="true"] { --lw-bg: #161616; --lw-fg: #e6e6e6;
  --lw-muted: #a0a0a0; --lw-border: #3a3a3a; --lw-input-bg: #222; } }
.lw-widget * { box-sizing: border-box; }
.lw-title { font-weight: 600; font-size: 14px; margin: 0 0 6px; overflow-wrap: anywhere; }
.lw-controls { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; margin-bottom: 6px; }
.lw-control { display: inline-flex; align-items: center; gap: 6px; white-space: nowrap; }
.lw-control > span.lw-label { color: var(--lw-muted); }
.lw-widget input[type=number], .lw-widget select { font: inherit; color: var(--lw-fg); background: var(--lw-input-bg);
  border: 1px solid var(--lw-border); border-radius: 4px; padding: 2px 4px; height: 24px; }
.lw-widget input[type=number] { width: 72px; }
.lw-widget input[type=range] { width: 130px; accent-color: var(--lw-accent); }
.lw-widget input[type=checkbox] { accent-color: var(--lw-accent); margin: 0; }
.lw-widget button { font: inherit; color: var(--lw-fg); background: var(--lw-input-bg); border: 1px solid var(--lw-border);
  border-radius: 4px; padding: 1px 8px; height: 24px; cursor: pointer; }
.lw-widget button:hover:not(:disabled) { border-color: var(--lw-accent); }
.lw-widget :disabled { opacity: 0.55; cursor: not-allowed; }
.lw-value { min-width: 2.5em; font-variant-numeric: tabular-nums; }
.lw-plot { width: 100%; height: 440px; }
.lw-widget[data-view="curve"] .lw-plot { height: 360px; }
.lw-footer { display: flex; align-items: center; gap: 10px; min-height: 20px; margin-top: 4px; color: var(--lw-muted); }
.lw-status { flex: 1 1 auto; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-size: 12px; }
.lw-widget[data-narrow="true"] .lw-status { white-space: normal; overflow-wrap: anywhere; }
.lw-widget[data-state="preview"] .lw-status::before { content: "PREVIEW "; color: var(--lw-accent); font-weight: 600; }
.lw-widget[data-state="stale"] .lw-plot { opacity: 0.55; transition: opacity 0.2s; }
.lw-progress { flex: 0 0 160px; height: 10px; accent-color: var(--lw-accent); }
.lw-progress[hidden] { display: none; }
.lw-error { color: var(--lw-error); border: 1px solid var(--lw-error); border-radius: 4px; padding: 4px 8px;
  margin-top: 6px; white-space: pre-wrap; font-size: 12px; }
.lw-error[hidden] { display: none; }
.lw-offline-note { color: var(--lw-muted); font-size: 12px; font-style: italic; margin: 0 0 6px; }
`;

const REGISTRY = new Map(); // id -> css of every style a view injected, for adoptStyles

/** Add a <style id=id> once per document (views rendered again, or side by side, share it). */
export function injectCss(id, css, doc = document) {
  REGISTRY.set(id, css);
  if (doc.getElementById(id)) return;
  const style = doc.createElement("style");
  style.id = id;
  style.textContent = css;
  doc.head.appendChild(style);
}

export function injectStyle(doc = document) {
  injectCss("lw-style", CSS, doc);
}

/** A view rendered inside a shadow root (marimo isolates each widget so) gets the same styles there: the
 *  document's <style> elements do not reach into it. */
export function adoptStyles(shadow) {
  for (const [id, css] of REGISTRY) {
    if (shadow.querySelector(`style[data-lw-style="${id}"]`)) continue;
    const style = document.createElement("style");
    style.dataset.lwStyle = id;
    style.textContent = css;
    shadow.appendChild(style);
  }
}
