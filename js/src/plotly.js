// Partial plotly.js build: only the traces the widgets draw (full build 4.6 MB, this one about a third).
import Plotly from "plotly.js/lib/core";
import bar from "plotly.js/lib/bar";
import contour from "plotly.js/lib/contour";
import heatmap from "plotly.js/lib/heatmap";
import scatter from "plotly.js/lib/scatter";
import scatter3d from "plotly.js/lib/scatter3d";
import surface from "plotly.js/lib/surface";

Plotly.register([bar, contour, heatmap, scatter, scatter3d, surface]);
export default Plotly;
