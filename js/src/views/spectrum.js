// The spectrum view (see ../spectrum.js).
export { renderSpectrum as render } from "../spectrum.js";
