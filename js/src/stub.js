// What each widget's _esm holds in Jupyter: a few hundred bytes that load the one bundle from the kernel's shared
// Bundle model (a widget reference), so a notebook saved with its widget state stores the bundle once, not once
// per widget.  Both the live kernel and a reopened notebook's saved state provide that model.
const loaded = new Map();

async function bundleOf(model) {
  const ref = String(model.get("_bundle") || "");
  const id = ref.startsWith("IPY_MODEL_") ? ref.slice("IPY_MODEL_".length) : ref;
  if (!loaded.has(id)) {
    loaded.set(id, (async () => {
      const shared = await model.widget_manager.get_model(id);
      const url = URL.createObjectURL(new Blob([shared.get("source")], { type: "text/javascript" }));
      try {
        return (await import(url)).default;
      } finally {
        URL.revokeObjectURL(url);
      }
    })());
  }
  return loaded.get(id);
}

export default {
  async render({ model, el }) {
    const bundle = await bundleOf(model);
    return bundle.render({ model, el });
  },
};
