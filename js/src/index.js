// anywidget entry point: one bundle for every landscape_widgets view; the `_view` trait picks the view.
import { renderCurve } from "./curve.js";
import { renderSpectrum } from "./spectrum.js";
import { renderSurface } from "./surface.js";
import { renderTrajectory } from "./trajectory.js";

const VIEWS = { surface: renderSurface, curve: renderCurve, spectrum: renderSpectrum, trajectory: renderTrajectory };

function render({ model, el }) {
  const name = model.get("_view");
  const view = VIEWS[name];
  if (!view) {
    el.textContent = `landscape_widgets: unknown view ${JSON.stringify(name)} (widget and bundle out of sync?)`;
    return undefined;
  }
  return view({ model, el });
}

export { reviveBuffers } from "./codec.js";
export default { render };
