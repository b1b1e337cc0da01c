// Placeholder front end: the real widgets (plotly.js views) come with the widget issue.
function render({ model, el }) {
  const div = document.createElement("div");
  div.className = "lw-placeholder";
  const update = () => { div.textContent = `landscape_widgets: ${model.get("title") || "loading"}`; };
  update();
  model.on("change:title", update);
  el.appendChild(div);
  return () => model.off("change:title", update);
}
export default { render };
