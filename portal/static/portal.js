// aivc portal: the embedding map (plotly, served locally). Text goes in via textContent (never innerHTML).
function aivcWebgl() {  // plotly's scattergl draws nothing without WebGL (it shows a notice instead)
  try { var c = document.createElement("canvas"); return !!(c.getContext("webgl") || c.getContext("experimental-webgl")); } catch (e) { return false; }
}
function aivcMap() {
  var ref = JSON.parse(document.getElementById("map-ref").textContent);
  var sel = document.getElementById("color");
  var type = aivcWebgl() ? "scattergl" : "scatter";  // SVG points where the browser has no WebGL
  function draw() {
    fetch("/embeddings/" + encodeURIComponent(ref) + "/map.json?color=" + encodeURIComponent(sel.value), {credentials: "same-origin"})
      .then(function (r) { return r.json(); }).then(function (d) {
        var groups = {};
        d.ids.forEach(function (id, i) { var g = String(d.values[i]); (groups[g] = groups[g] || {x: [], y: [], ids: []}); groups[g].x.push(d.x[i]); groups[g].y.push(d.y[i]); groups[g].ids.push(id); });
        var traces = Object.keys(groups).slice(0, 60).map(function (g) { return {type: type, mode: "markers", name: g, x: groups[g].x, y: groups[g].y, customdata: groups[g].ids, text: groups[g].ids, marker: {size: 4}}; });
        Plotly.newPlot("map", traces, {margin: {t: 10}, hovermode: "closest"}).then(function (gd) {
          gd.on("plotly_click", function (ev) { neighbours(ev.points[0].customdata); });
          gd.setAttribute("data-n", d.ids.length);  // drawn: the browser tests wait for this
        });
      });
  }
  function neighbours(id) {
    fetch("/api/neighbors/" + encodeURIComponent(ref) + "/" + encodeURIComponent(id) + "?k=10", {credentials: "same-origin"})
      .then(function (r) { return r.json(); }).then(function (d) {
        var box = document.getElementById("neighbours"); box.textContent = "";
        var h = document.createElement("p"); h.id = "clicked"; h.textContent = "cell " + id; box.appendChild(h);
        var ul = document.createElement("ul"); ul.id = "neighbour-list";
        (d.neighbors || d.rows || []).forEach(function (n) { var li = document.createElement("li"); li.textContent = JSON.stringify(n); ul.appendChild(li); });
        if (d.error) { var li = document.createElement("li"); li.textContent = d.error; ul.appendChild(li); }
        box.appendChild(ul);
      });
  }
  sel.addEventListener("change", draw); draw();
  window.aivcNeighbours = neighbours;
}
