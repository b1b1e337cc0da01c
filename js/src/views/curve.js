// The curve view (see ../curve.js).
export { renderCurve as render } from "../curve.js";
