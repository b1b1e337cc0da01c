// anywidget entry point: one bundle for every landscape_widgets view; the `_view` trait picks the view.  Every file in
// views/ is bundled (esbuild's glob import) and is the view of that name: a new view is one file there and its
// Python widget.
function unknown(el, name) {
  el.textContent = `landscape_widgets: unknown view ${JSON.stringify(name)} (widget and bundle out of sync?)`;
  return undefined;
}

async function render({ model, el }) {
  const name = model.get("_view");
  if (typeof name !== "string" || !/^[a-z][a-z0-9_-]*$/.test(name)) return unknown(el, name);
  let view;
  try {
    view = await import(`./views/${name}.js`);
  } catch (_) {
    return unknown(el, name);
  }
  return view.render({ model, el });
}

export { reviveBuffers } from "./codec.js";
export default { render };
