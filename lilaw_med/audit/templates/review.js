"use strict";
// The review page's behaviour. Every value from the data is put in the page as text
// (textContent, setAttribute), never as markup. Progress is written to localStorage after
// every action, under the run's key, so closing the page loses nothing.
(function () {
  var D = JSON.parse(document.getElementById("review-data").textContent);
  var ITEMS = D.items, NAMES = D.class_names, N = ITEMS.length;
  var STORE = "lilaw-med-review:" + D.run_key, READER = "lilaw-med-review:reviewer";
  var KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];
  var COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7c3aed", "#be123c", "#0e7490", "#a16207", "#4b5563", "#db2777", "#65a30d"];
  var LABELS = {keep: "Keep: the label is right", relabel: "Relabel", exclude: "Exclude", skip: "Skipped"};
  var perf = window.__review = {ready_ms: null, decision_ms: []};
  var $ = function (id) { return document.getElementById(id); };

  var state = {decisions: {}, history: [], pos: 0};
  var storageOk = true;
  try {
    var saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && typeof saved === "object" && saved.decisions) { state = saved; }
  } catch (e) { storageOk = false; }
  if (!(state.pos >= 0 && state.pos < N)) { state.pos = 0; }

  function persist() {
    try { localStorage.setItem(STORE, JSON.stringify(state)); }
    catch (e) {
      storageOk = false;
      var w = $("warn");
      w.textContent = "This browser does not keep the progress (" + e.name + "): save decisions often.";
      w.style.display = "block";
    }
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    return e;
  }
  function className(k) { return (k === null || k === undefined || k < 0) ? "n/a" : (NAMES[k] !== undefined ? NAMES[k] : String(k)); }
  function fmt(v) { return (v === null || v === undefined) ? "n/a" : Number(v).toFixed(3); }
  function keyOf(k) { return k < KEYS.length ? KEYS[k] : ""; }

  // ---------------------------------------------------------------- the queue (left)
  var rowsEl = [];
  (function buildQueue() {
    var frag = document.createDocumentFragment();
    for (var i = 0; i < N; i++) {
      var r = el("div", {"class": "q", "data-index": String(i), title: ITEMS[i].reason});
      r.appendChild(el("span", {"class": "dot"}));
      r.appendChild(el("span", {"class": "id"}, ITEMS[i].id));
      frag.appendChild(r);
      rowsEl.push(r);
    }
    $("queue").appendChild(frag);
    $("queue").addEventListener("click", function (ev) {
      var t = ev.target.closest(".q");
      if (t) { go(Number(t.getAttribute("data-index"))); }
    });
  })();
  function markRow(i) {
    var d = state.decisions[ITEMS[i].id];
    rowsEl[i].firstChild.className = "dot" + (d && d.decision ? " " + d.decision : "");
  }

  // ---------------------------------------------------------------- decision buttons (right)
  (function buildButtons() {
    var box = $("buttons");
    var keep = el("button", {"class": "b-keep", "data-act": "keep", title: "the given label is right"});
    keep.appendChild(el("span", {}, "Keep label")); keep.appendChild(el("kbd", {}, "K"));
    box.appendChild(keep);
    var ex = el("button", {"class": "b-exclude", "data-act": "exclude", title: "leave the item out of training (not gradable, wrong study, ...)"});
    ex.appendChild(el("span", {}, "Exclude")); ex.appendChild(el("kbd", {}, "X"));
    box.appendChild(ex);
    box.appendChild(el("div", {"class": "sub"}, "Relabel as"));
    for (var k = 0; k < NAMES.length; k++) {
      var b = el("button", {"data-act": "relabel", "data-class": String(k), title: "relabel as " + className(k)});
      b.appendChild(el("span", {}, className(k)));
      if (keyOf(k)) { b.appendChild(el("kbd", {}, keyOf(k))); }
      box.appendChild(b);
    }
    var sk = el("button", {"data-act": "skip", title: "not decided: go to the next item"});
    sk.appendChild(el("span", {}, "Skip")); sk.appendChild(el("kbd", {}, "S"));
    box.appendChild(sk);
    var un = el("button", {"data-act": "undo"});
    un.appendChild(el("span", {}, "Undo")); un.appendChild(el("kbd", {}, "U"));
    box.appendChild(un);
    box.addEventListener("click", function (ev) {
      var b = ev.target.closest("button");
      if (!b) { return; }
      var act = b.getAttribute("data-act");
      if (act === "undo") { undo(); } else if (act === "relabel") { decide("relabel", Number(b.getAttribute("data-class"))); } else { decide(act, null); }
    });
  })();

  // ---------------------------------------------------------------- the chart
  function chart(item) {
    var box = $("chart"), legend = $("legend");
    box.textContent = ""; legend.textContent = "";
    var sp = D.splits[item.split];
    if (!item.probs || !sp) { box.appendChild(el("p", {"class": "path"}, "no training dynamics recorded for this item")); return; }
    var W = 380, H = 150, L = 30, R = 8, T = 8, B = 22, ep = sp.epochs, E = ep.length;
    var x = function (j) { return L + (E > 1 ? j * (W - L - R) / (E - 1) : (W - L - R) / 2); };
    var y = function (p) { return T + (1 - p) * (H - T - B); };
    var s = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "class probabilities per epoch"});
    if (sp.window) {
      var a = sp.window[0] - 1, b = sp.window[1] - 1, half = E > 1 ? (W - L - R) / (E - 1) / 2 : 10;
      s.appendChild(svg("rect", {x: Math.max(L, x(a) - half), y: T, width: Math.min(W - R, x(b) + half) - Math.max(L, x(a) - half),
        height: H - T - B, fill: "#d9f0df"}));
      var wt = svg("text", {x: Math.max(L, x(a) - half) + 3, y: T + 11, "font-size": "10", fill: "#1b7a3d"});
      wt.textContent = "scoring window"; s.appendChild(wt);
    }
    [0, 0.5, 1].forEach(function (p) {
      s.appendChild(svg("line", {x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#dde1e6", "stroke-width": "1"}));
      var t = svg("text", {x: L - 4, y: y(p) + 3, "font-size": "10", "text-anchor": "end", fill: "#5d6773"});
      t.textContent = String(p); s.appendChild(t);
    });
    var ticks = E <= 10 ? ep.map(function (_, j) { return j; }) : [0, Math.floor((E - 1) / 2), E - 1];
    ticks.forEach(function (j) {
      var t = svg("text", {x: x(j), y: H - 8, "font-size": "10", "text-anchor": "middle", fill: "#5d6773"});
      t.textContent = String(ep[j]); s.appendChild(t);
    });
    var xl = svg("text", {x: W - R, y: H - 8, "font-size": "10", "text-anchor": "end", fill: "#5d6773"});
    xl.textContent = "epoch"; if (E > 10) { s.appendChild(xl); }
    var C = NAMES.length;
    for (var k = 0; k < C; k++) {
      var pts = [], segs = [];
      for (var j = 0; j < E; j++) {
        var row = item.probs[j];
        if (row && row[k] !== null && row[k] !== undefined) { pts.push(x(j).toFixed(1) + "," + y(row[k]).toFixed(1)); }
        else if (pts.length) { segs.push(pts); pts = []; }
      }
      if (pts.length) { segs.push(pts); }
      var given = k === item.given, color = COLORS[k % COLORS.length];
      segs.forEach(function (seg) {
        if (seg.length === 1) { var xy = seg[0].split(","); s.appendChild(svg("circle", {cx: xy[0], cy: xy[1], r: 3, fill: color})); }
        else { s.appendChild(svg("polyline", {points: seg.join(" "), fill: "none", stroke: color, "stroke-width": given ? "3" : "1.6",
          "stroke-dasharray": given ? "" : "5 3"})); }
      });
      var li = el("span"); var sw = el("i"); sw.style.background = color; li.appendChild(sw);
      li.appendChild(document.createTextNode(className(k) + (given ? " (given)" : "")));
      legend.appendChild(li);
    }
    box.appendChild(s);
  }

  // ---------------------------------------------------------------- the item
  function images(item) {
    var v = $("viewer"); v.textContent = "";
    if (!item.views.length) { v.appendChild(el("div", {"class": "noimg"}, "no image: " + (item.image_error || "not read"))); return; }
    var box = el("div", {"class": "views"});
    item.views.forEach(function (view) {
      var f = el("figure", {"class": item.views.length === 1 ? "one" : ""});
      var img = el("img", {alt: item.id + (view.title ? " " + view.title : "")});
      img.src = document.getElementById("img-" + view.image).textContent;
      f.appendChild(img);
      if (view.title) { f.appendChild(el("figcaption", {}, view.title)); }
      box.appendChild(f);
    });
    v.appendChild(box);
  }

  function facts(item) {
    var dl = $("facts"); dl.textContent = "";
    var add = function (k, v) { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); };
    add("given class", className(item.given));
    add("predicted", item.predicted === null || item.predicted === undefined ? "n/a" : className(item.predicted) + " (p " + fmt(item.p_predicted) + ")");
    add("p(given)", fmt(item.p_given));
    add("difficulty", item.difficulty || "n/a");
    add("label score", item.score === null ? "n/a" : fmt(item.score) + (item.rank ? "  (rank " + item.rank + " of the " + (D.split_sizes[item.split] || "?") + " " + item.split + " items)" : ""));
    $("path").textContent = item.path;
    var b = $("badges"); b.textContent = "";
    b.appendChild(el("span", {"class": "badge " + (item.reason === "flagged" ? "flagged" : item.reason === "hard" ? "hard" : "")},
      item.reason === "flagged" ? "flagged as a suspected mislabel" : item.reason === "hard" ? "hard case" : "asked for"));
    b.appendChild(el("span", {"class": "badge"}, item.split));
    b.appendChild(el("span", {"class": "badge"}, "item " + (state.pos + 1) + " of " + N));
  }

  function status(item) {
    var d = state.decisions[item.id], s = $("status");
    var buttons = $("buttons").querySelectorAll("button[data-act=relabel]");
    for (var i = 0; i < buttons.length; i++) { buttons[i].classList.toggle("given", Number(buttons[i].getAttribute("data-class")) === item.given); }
    s.className = "status" + (d && d.decision ? " " + d.decision : "");
    if (!d || !d.decision) { s.textContent = "Not decided yet."; return; }
    s.textContent = LABELS[d.decision] + (d.decision === "relabel" ? " as " + className(d.label) : "") + "  ·  " + d.time.replace("T", " ").slice(0, 16) + " UTC";
  }

  function counter() {
    var decided = 0, skipped = 0;
    for (var i = 0; i < N; i++) {
      var d = state.decisions[ITEMS[i].id];
      if (d && d.decision === "skip") { skipped++; } else if (d && d.decision) { decided++; }
    }
    var c = $("counter"); c.textContent = "";
    c.appendChild(el("b", {id: "n-decided"}, decided)); c.appendChild(document.createTextNode(" decided · "));
    c.appendChild(el("b", {id: "n-left"}, N - decided)); c.appendChild(document.createTextNode(" left of " + N + (skipped ? " (" + skipped + " skipped)" : "")));
    $("bar").style.width = (N ? 100 * decided / N : 0) + "%";
  }

  var current = -1;
  function show() {
    if (!N) { $("viewer").appendChild(el("div", {"class": "noimg"}, "The queue is empty.")); counter(); return; }
    var item = ITEMS[state.pos];
    if (current >= 0 && current < N) { rowsEl[current].classList.remove("cur"); }
    current = state.pos;
    rowsEl[current].classList.add("cur");
    rowsEl[current].scrollIntoView({block: "nearest"});
    $("itemid").textContent = item.id;
    images(item); facts(item); chart(item); status(item);
    var d = state.decisions[item.id];
    $("note").value = d && d.note ? d.note : "";
    counter();
  }

  function go(i) { if (N) { state.pos = Math.max(0, Math.min(N - 1, i)); persist(); show(); } }

  // ---------------------------------------------------------------- decisions
  function decide(decision, label) {
    if (!N) { return; }
    var t0 = performance.now();
    var item = ITEMS[state.pos];
    if (decision === "relabel") {
      if (!(label >= 0 && label < NAMES.length)) { return; }
      if (label === item.given) { decision = "keep"; label = null; }  // "relabel" as the given class: the label is right
    }
    var before = state.decisions[item.id] ? JSON.parse(JSON.stringify(state.decisions[item.id])) : null;
    state.decisions[item.id] = {decision: decision, label: decision === "relabel" ? label : null,
      note: $("note").value, time: new Date().toISOString().slice(0, 19) + "Z"};
    state.history.push({id: item.id, pos: state.pos, before: before});
    if (state.history.length > 1000) { state.history.shift(); }
    markRow(state.pos);
    if (state.pos < N - 1) { state.pos++; }
    persist();
    show();
    perf.decision_ms.push(performance.now() - t0);
  }

  function undo() {
    var h = state.history.pop();
    if (!h) { return; }
    if (h.before) { state.decisions[h.id] = h.before; } else { delete state.decisions[h.id]; }
    state.pos = h.pos;
    markRow(h.pos);
    persist();
    show();
  }

  $("note").addEventListener("input", function () {
    var item = ITEMS[state.pos], d = state.decisions[item.id] || {decision: "", label: null, note: "", time: ""};
    d.note = $("note").value;
    state.decisions[item.id] = d;
    persist();
  });
  $("reviewer").value = (function () { try { return localStorage.getItem(READER) || ""; } catch (e) { return ""; } })();
  $("reviewer").addEventListener("input", function () { try { localStorage.setItem(READER, $("reviewer").value); } catch (e) { /* shown by persist */ } });

  // ---------------------------------------------------------------- the CSV
  var FORMULA = /^[=+\-@\t\r]/;  // lilaw_med.utils.FORMULA_START: a spreadsheet would run the cell
  function cell(v) {
    var s = v === null || v === undefined ? "" : String(v);
    if (FORMULA.test(s)) { s = "'" + s; }
    return /[",\r\n]/.test(s) ? "\"" + s.replace(/"/g, "\"\"") + "\"" : s;
  }
  function labelText(k) {  // the class name; its index where the name reads as a number
    var n = className(k);
    return /^-?\d+$/.test(n) ? String(k) : n;
  }
  function csvText() {
    var reviewer = $("reviewer").value.trim();
    var lines = ["id,decision,new_label,note,reviewer,time"];
    for (var i = 0; i < N; i++) {
      var item = ITEMS[i], d = state.decisions[item.id];
      if (!d || (!d.decision && !d.note)) { continue; }
      lines.push([item.id, d.decision || "skip", d.decision === "relabel" ? labelText(d.label) : "", d.note || "", reviewer, d.time]
        .map(cell).join(","));
    }
    return lines.join("\n") + "\n";
  }
  function save() {
    var reviewer = $("reviewer").value.trim().replace(/[^A-Za-z0-9_.-]+/g, "_");
    var stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
    var a = el("a", {download: "decisions_" + D.run_name.replace(/[^A-Za-z0-9_.-]+/g, "_") + (reviewer ? "_" + reviewer : "") + "_" + stamp + ".csv"});
    a.href = URL.createObjectURL(new Blob([csvText()], {type: "text/csv;charset=utf-8"}));
    document.body.appendChild(a); a.click(); a.remove();
  }
  $("save").addEventListener("click", save);
  window.__review.csv = csvText;

  // ---------------------------------------------------------------- the keyboard
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if ((ev.ctrlKey || ev.metaKey) && (ev.key === "s" || ev.key === "S")) { ev.preventDefault(); save(); return; }
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT")) {
      if (ev.key === "Escape") { t.blur(); }
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); } return; }
    var k = ev.key;
    var idx = KEYS.indexOf(k);
    if (idx >= 0 && idx < NAMES.length) { decide("relabel", idx); }
    else if (k === "k" || k === "K") { decide("keep", null); }
    else if (k === "x" || k === "X") { decide("exclude", null); }
    else if (k === "s" || k === "S") { decide("skip", null); }
    else if (k === "u" || k === "U") { undo(); }
    else if (k === "ArrowRight") { go(state.pos + 1); }
    else if (k === "ArrowLeft") { go(state.pos - 1); }
    else if (k === "n" || k === "N") { $("note").focus(); }
    else { return; }
    ev.preventDefault();
  });

  for (var i = 0; i < N; i++) { markRow(i); }
  show();
  perf.ready_ms = performance.now();
})();
