// The surface view (see ../surface.js).
export { renderSurface as render } from "../surface.js";
