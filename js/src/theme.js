// Colours from JupyterLab's CSS variables, resolved to rgb() strings (plotly.js 4 rejects CSS variables).

const LIGHT = { background: "rgb(255, 255, 255)", foreground: "rgb(33, 33, 33)", muted: "rgb(117, 117, 117)",
                grid: "rgb(224, 224, 224)", fontFamily: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif" };
const DARK = { background: "rgb(22, 22, 22)", foreground: "rgb(230, 230, 230)", muted: "rgb(160, 160, 160)",
               grid: "rgb(66, 66, 66)", fontFamily: LIGHT.fontFamily };

function resolveColor(el, cssValue) {
  // Let the browser parse the value (var(), hex, names) and hand back the computed rgb().
  const probe = document.createElement("span");
  probe.style.display = "none";
  probe.style.color = cssValue;
  el.appendChild(probe);
  const out = getComputedStyle(probe).color;
  probe.remove();
  return out;
}

export function isDarkPage() {
  const b = document.body;
  if (b && b.dataset.jpThemeLight !== undefined) return b.dataset.jpThemeLight === "false";
  return typeof matchMedia === "function" && matchMedia("(prefers-color-scheme: dark)").matches;
}

/** The theme for plotly, read at el (inside JupyterLab the --jp-* variables exist; elsewhere fall back). */
export function readTheme(el) {
  const fallback = isDarkPage() ? DARK : LIGHT;
  const css = getComputedStyle(el);
  const v = (name) => css.getPropertyValue(name).trim();
  if (!v("--jp-layout-color0")) return fallback;
  const c = (name, fb) => (v(name) ? resolveColor(el, `var(${name})`) : fb);
  return {
    background: c("--jp-layout-color0", fallback.background),
    foreground: c("--jp-ui-font-color1", fallback.foreground),
    muted: c("--jp-ui-font-color2", fallback.muted),
    grid: c("--jp-border-color2", fallback.grid),
    fontFamily: v("--jp-ui-font-family") || fallback.fontFamily,
  };
}

/**
 * Call fn when JupyterLab switches theme or the OS scheme flips; returns a disposer.  Lab sets the body's
 * data-jp-theme-* attributes and swaps the theme stylesheet in <head>, not necessarily in that order, so a
 * change is followed by a few delayed re-reads; fn decides whether the colours really changed.
 */
export function watchTheme(fn) {
  const timers = new Set();
  const poke = () => {
    for (const ms of [0, 150, 600, 1500]) {
      const id = setTimeout(() => { timers.delete(id); fn(); }, ms);
      timers.add(id);
    }
  };
  // a theme's stylesheet may load long after its <link> is added (seconds on a loaded machine): read again on load
  const mo = new MutationObserver((records) => {
    poke();
    for (const r of records) for (const node of r.addedNodes || [])
      if (node.tagName === "LINK" || node.tagName === "STYLE") node.addEventListener?.("load", poke, { once: true });
  });
  if (document.body) mo.observe(document.body, { attributes: true,
    attributeFilter: ["data-jp-theme-light", "data-jp-theme-name", "class"] });
  if (document.head) mo.observe(document.head, { childList: true });
  const mq = typeof matchMedia === "function" ? matchMedia("(prefers-color-scheme: dark)") : null;
  mq?.addEventListener?.("change", poke);
  return () => { mo.disconnect(); mq?.removeEventListener?.("change", poke); timers.forEach(clearTimeout); };
}
