// aivc portal: the embedding map (plotly, served locally). Text goes in via textContent (never
// innerHTML); text handed to plotly is escaped first (plotly reads some HTML tags in labels).
function aivcWebgl() {  // plotly's scattergl draws nothing without WebGL (it shows a notice instead)
  try { var c = document.createElement("canvas"); return !!(c.getContext("webgl") || c.getContext("experimental-webgl")); } catch (e) { return false; }
}
function aivcEsc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
var AIVC_MAX_GROUPS = 40;  // the largest groups get their own colour; the rest are drawn as one "other" trace
function aivcTraces(d, type) {
  var numeric = d.values.length > 0 && d.values.every(function (v) { return v === null || typeof v === "number"; }) && d.values.some(function (v) { return v !== null; });
  if (numeric) {  // a continuous field: one trace, a colour scale
    return [{type: type, mode: "markers", name: aivcEsc(d.color), x: d.x, y: d.y, customdata: d.ids, text: d.ids.map(function (id, i) { return aivcEsc(id + ": " + d.values[i]); }),
             hoverinfo: "text", marker: {size: 4, color: d.values.map(function (v) { return v === null ? NaN : v; }), colorscale: "Viridis", showscale: true, colorbar: {title: {text: aivcEsc(d.color)}}}}];
  }
  var groups = {};
  d.ids.forEach(function (id, i) { var g = d.values[i] === null ? "(none)" : String(d.values[i]); (groups[g] = groups[g] || {x: [], y: [], ids: []}); groups[g].x.push(d.x[i]); groups[g].y.push(d.y[i]); groups[g].ids.push(id); });
  var names = Object.keys(groups).sort(function (a, b) { return groups[b].ids.length - groups[a].ids.length || (a < b ? -1 : 1); });
  if (names.length > AIVC_MAX_GROUPS) {
    var other = {x: [], y: [], ids: []}, rest = names.slice(AIVC_MAX_GROUPS - 1);
    rest.forEach(function (g) { other.x = other.x.concat(groups[g].x); other.y = other.y.concat(groups[g].y); other.ids = other.ids.concat(groups[g].ids); });
    names = names.slice(0, AIVC_MAX_GROUPS - 1);
    groups["other (" + rest.length + " values)"] = other; names.push("other (" + rest.length + " values)");
  }
  return names.map(function (g) {
    return {type: type, mode: "markers", name: aivcEsc(g), x: groups[g].x, y: groups[g].y, customdata: groups[g].ids,
            text: groups[g].ids.map(function (id) { return aivcEsc(id + " · " + g); }), hoverinfo: "text", marker: {size: 4}};
  });
}
function aivcMap() {
  var ref = JSON.parse(document.getElementById("map-ref").textContent);
  var sel = document.getElementById("color");
  var type = aivcWebgl() ? "scattergl" : "scatter";  // SVG points where the browser has no WebGL
  var wanted = new URLSearchParams(window.location.search).get("color");  // a link may pick the colour
  if (wanted && Array.prototype.some.call(sel.options, function (o) { return o.value === wanted; })) sel.value = wanted;
  function draw() {
    var map = document.getElementById("map"); map.removeAttribute("data-n");
    fetch("/embeddings/" + encodeURIComponent(ref) + "/map.json?color=" + encodeURIComponent(sel.value), {credentials: "same-origin"})
      .then(function (r) { return r.json(); }).then(function (d) {
        if (d.error) { map.textContent = d.error; return; }
        Plotly.newPlot("map", aivcTraces(d, type), {margin: {t: 10}, hovermode: "closest", legend: {itemsizing: "constant"}}).then(function (gd) {
          gd.removeAllListeners && gd.removeAllListeners("plotly_click");
          gd.on("plotly_click", function (ev) { neighbours(ev.points[0].customdata); });
          gd.setAttribute("data-n", d.ids.length);  // drawn: the browser tests wait for this
          gd.setAttribute("data-color", d.color);
        });
      });
  }
  function neighbours(id) {
    fetch("/api/neighbors/" + encodeURIComponent(ref) + "/" + encodeURIComponent(id) + "?k=10", {credentials: "same-origin"})
      .then(function (r) { return r.json(); }).then(function (d) {
        var box = document.getElementById("neighbours"); box.textContent = "";
        var h = document.createElement("p"); h.id = "clicked"; h.textContent = "cell " + id; box.appendChild(h);
        var ol = document.createElement("ol"); ol.id = "neighbour-list";
        (d.neighbors || d.rows || []).forEach(function (n) {
          var li = document.createElement("li"); li.setAttribute("data-row", JSON.stringify(n));
          var who = n.obs_id || n.id || "";
          li.textContent = who + (n.dataset_id ? " (" + n.dataset_id + ")" : "") + (n.similarity !== undefined ? " · similarity " + Number(n.similarity).toFixed(3) : "");
          ol.appendChild(li);
        });
        if (d.error) { var p = document.createElement("p"); p.className = "error"; p.textContent = d.error; box.appendChild(p); }
        box.appendChild(ol);
      });
  }
  sel.addEventListener("change", draw); draw();
  window.aivcNeighbours = neighbours;
}
