// aivc portal cards: the predicted-label bars of a reannotation report and a model's loss
// curves, drawn with the locally served plotly. Text reaches the page through textContent;
// text handed to plotly has &, < and > written as entities, so plotly shows it as written
// and never reads it as its tags (<a>, <b>, <br>, ...).
function aivcPlain(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function aivcCardData(id) {
  var el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

function aivcSay(box, text) {
  box.textContent = "";
  var p = document.createElement("p");
  p.className = "note";
  p.textContent = text;
  box.appendChild(p);
}

function aivcLabelBars() {
  var d = aivcCardData("label-data"), box = document.getElementById("label-plot");
  if (!d || !box) return;
  box.setAttribute("data-n", d.labels.length);
  if (!d.labels.length) { aivcSay(box, "no predicted cells you may see"); return; }
  if (!window.Plotly) { aivcSay(box, "the plot needs /assets/plotly.min.js"); return; }
  var names = d.labels.map(aivcPlain);
  Plotly.newPlot(box, [{type: "bar", x: names, y: d.counts, hovertemplate: "%{x}: %{y} cells<extra></extra>"}],
    {margin: {t: 10, b: 180}, yaxis: {title: {text: "cells"}}, xaxis: {title: {text: aivcPlain(d.label_column || "")}, automargin: true}},
    {displaylogo: false, responsive: true});
}

function aivcLossCurves() {
  var d = aivcCardData("loss-data"), box = document.getElementById("loss-plot");
  if (!d || !box) return;
  if (!window.Plotly) { aivcSay(box, "the plot needs /assets/plotly.min.js"); return; }
  var traces = Object.keys(d.series).map(function (k) {
    return {type: "scatter", mode: "lines+markers", name: aivcPlain(k), x: d.epoch, y: d.series[k], marker: {size: 4}};
  });
  box.setAttribute("data-n", traces.length);
  Plotly.newPlot(box, traces, {margin: {t: 10}, xaxis: {title: {text: "epoch"}}, yaxis: {title: {text: "loss"}}}, {displaylogo: false, responsive: true});
}
