// The console's one script: draws the charts (uPlot) from the JSON the page carries, and
// keeps a running experiment's page current by polling its JSON. No build step.
"use strict";

function width(figure) {
  // The figure's own width, less its padding: the chart fits a phone's screen.
  return Math.max(260, Math.min((figure.clientWidth || 800) - 18, 960));
}

function placed(figure) {
  // The chart goes above the figure's caption.
  return (u, init) => { figure.insertBefore(u.root, figure.querySelector("figcaption")); init(); };
}

function readJson(figure) {
  return JSON.parse(figure.querySelector('script[type="application/json"]').textContent);
}

function curveChart(figure) {
  const curve = readJson(figure);
  const data = uPlot.join([[curve.step, curve.train_loss], [curve.eval_step, curve.eval_loss]]);
  new uPlot({
    title: figure.dataset.title, width: width(figure), height: 240,
    scales: {x: {time: false}},
    axes: [{label: "optimizer step"}, {label: "loss"}],
    series: [{label: "step"}, {label: "training loss", stroke: "#1f77b4"},
             {label: "validation loss", stroke: "#ff7f0e", spanGaps: true, points: {show: true}}],
  }, data, placed(figure));
}

function differenceData(series) {
  const zero = series.outcomes.map(() => 0);
  return [series.outcomes, series.difference, series.high, series.low, zero];
}

function differenceChart(figure) {
  const chart = new uPlot({
    title: "Candidate minus control: mean score with its always-valid 95% confidence sequence",
    width: width(figure), height: 300,
    scales: {x: {time: false}, y: {range: (u, min, max) => [Math.max(-1, Math.min(min, -0.05)), Math.min(1, Math.max(max, 0.05))]}},
    axes: [{label: "outcomes so far (both sides)"}, {label: "difference in mean score"}],
    series: [
      {label: "outcomes"},
      {label: "difference", stroke: "#2c7a3f", width: 2},
      {label: "upper bound", stroke: "#9bbfa5"},
      {label: "lower bound", stroke: "#9bbfa5"},
      {label: "decision boundary (0)", stroke: "#444", dash: [6, 4]},
    ],
    bands: [{series: [2, 3], fill: "rgba(44, 122, 63, 0.15)"}],
  }, differenceData(readJson(figure)), placed(figure));
  figure.chart = chart;  // for the browser test: its axes' labels are drawn on the canvas
  return chart;
}

function valueAt(data, path) {
  return path.split(".").reduce((v, key) => (v == null ? v : v[key]), data);
}

const FORMATS = {
  percent: (v) => (100 * v).toFixed(1) + "%",
  seconds: (v) => v + " s",
  fixed3: (v) => v.toFixed(3),
  signed3: (v) => (v >= 0 ? "+" : "") + v.toFixed(3),
  interval: (v) => v[0].toFixed(3) + " – " + v[1].toFixed(3),
  share: (v) => (100 * v).toFixed(1) + "%",
  ratio: (v) => v.toFixed(2) + "×",
};

function bind(root, data) {
  root.querySelectorAll("[data-bind]").forEach((el) => {
    const value = valueAt(data, el.dataset.bind);
    const empty = el.dataset.empty && !valueAt(data, el.dataset.empty);
    const format = FORMATS[el.dataset.format];
    el.textContent = value == null || empty ? "no data yet" : format ? format(value) : String(value);
  });
}

function follow(root, chart) {
  const every = 1000 * parseFloat(root.dataset.refreshS || "3");
  const poll = async () => {
    let data;
    try {
      const response = await fetch(root.dataset.source, {credentials: "same-origin", headers: {accept: "application/json"}});
      if (!response.ok) return setTimeout(poll, every);
      data = await response.json();
    } catch (error) {
      return setTimeout(poll, every);
    }
    bind(root, data);
    if (chart) chart.setData(differenceData(data.series));
    document.getElementById("decision").hidden = !data.decision;
    root.dataset.status = data.status;
    if (data.status === "running") setTimeout(poll, every);
    else document.querySelectorAll("#actions").forEach((el) => el.remove());
  };
  setTimeout(poll, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("figure[data-curve]").forEach(curveChart);
  const figure = document.getElementById("difference-chart");
  const chart = figure ? differenceChart(figure) : null;
  const root = document.getElementById("experiment");
  if (root && root.dataset.status === "running") follow(root, chart);
});
