// The trajectory view (see ../trajectory.js).
export { renderTrajectory as render } from "../trajectory.js";
