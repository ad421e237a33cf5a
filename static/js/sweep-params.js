// Parameters against the objective on the sweeps page: one scatter chart per searched parameter (x: the
// parameter's value, on a log axis for log-scale distributions, categories as categories; y: the held-out
// success rate of each completed trial), each stepped through with the arrow keys, and a table of the best
// trial's value per parameter as the text alternative.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { el, formatNumber, formatPercent } from "./format.js";

const HEIGHT = 200;
const COLOR = "#7c3aed";
const percent = (value) => `${(value * 100).toFixed(0)}%`;

let charts = [];
let drawn = "";

function formatValue(value) {
  return typeof value === "number" ? formatNumber(value, 3) : String(value);
}

function isLog(spec) {
  return spec.type === "log_uniform" || (spec.type === "int" && spec.log);
}

/** The distribution in words, as in the README's "Default search spaces". */
export function describeSpace(spec) {
  if (spec.type === "categorical") return `one of ${spec.choices.map(formatValue).join(", ")}`;
  const range = `${formatValue(spec.low)}–${formatValue(spec.high)}`;
  if (spec.type === "log_uniform") return `log-uniform ${range}`;
  if (spec.type === "uniform") return `uniform ${range}`;
  return `integers ${range}${spec.log ? ", log scale" : ""}`;
}

/** The completed trials as points of `key`, sorted by x (uPlot wants ascending x). */
function pointsOf(key, spec, trials) {
  const points = [];
  for (const trial of trials) {
    if (!(key in trial.params) || trial.success_rate === null) continue;
    const value = trial.params[key];
    const x = spec.type === "categorical" ? spec.choices.findIndex((choice) => choice === value) : value;
    if (x === -1 || !Number.isFinite(x) || (isLog(spec) && x <= 0)) continue;
    points.push({ x, y: trial.success_rate, value, trial });
  }
  return points.sort((a, b) => a.x - b.x || a.trial.number - b.trial.number);
}

function xScale(spec) {
  if (spec.type === "categorical") return { time: false, range: [-0.5, spec.choices.length - 0.5] };
  if (isLog(spec)) return { time: false, distr: 3, range: [spec.low, spec.high] };
  const pad = spec.low === spec.high ? 1 : 0;
  return { time: false, range: [spec.low - pad, spec.high + pad] };
}

function xAxis(key, spec) {
  const axis = { label: isLog(spec) ? `${key} (log scale)` : key, size: 40, labelSize: 16 };
  if (spec.type === "categorical") {
    axis.splits = () => spec.choices.map((_, index) => index);
    axis.values = (u, splits) => splits.map((index) => formatValue(spec.choices[index]));
  } else {
    // A log axis hides most ticks (1, 2, … 9 × 10^k) by handing them over as null: leave those blank.
    axis.values = (u, splits) => splits.map((value) => (value === null ? "" : formatValue(value)));
  }
  return axis;
}

function pointText(key, point) {
  const steps = point.trial.steps_to_best;
  const when = steps === null ? "" : `, first reached at ${steps.toLocaleString()} steps`;
  return `trial ${point.trial.number}: ${key} = ${formatValue(point.value)}, success rate ${formatPercent(point.y)}${when}`;
}

function summaryText(key, points) {
  if (!points.length) return `${key}: no completed trial yet.`;
  const best = points.reduce((a, b) => (b.y > a.y ? b : a));
  return `${points.length} completed trials; best ${formatPercent(best.y)} at ${key} = ${formatValue(best.value)} ` +
    `(trial ${best.trial.number}). Focus the chart and use the arrow keys to read each trial.`;
}

/**
 * One parameter's chart; the left and right arrow keys, Home and End move a cursor over its points,
 * read out below it. The figure is placed first and drawn by `draw()` once every figure is in the grid,
 * so that each plot takes its own column's width.
 */
class ParameterChart {
  constructor(container, key, spec, trials) {
    this.key = key;
    this.spec = spec;
    this.points = pointsOf(key, spec, trials);
    const readoutId = `param-readout-${key}`;
    this.figure = el("figure", {
      className: "chart param-chart",
      tabIndex: 0,
      "aria-describedby": readoutId,
      dataset: { param: key, points: String(this.points.length) },
    });
    this.target = el("div", {});
    this.readout = el("p", { className: "chart-latest", id: readoutId, "aria-live": "polite" },
      summaryText(key, this.points));
    this.figure.append(el("figcaption", {}, isLog(spec) ? `${key} (log scale)` : key), this.target, this.readout);
    container.append(this.figure);
    this.index = -1;
    this.figure.addEventListener("keydown", (event) => this.onKey(event));
  }

  width() {
    return Math.max(200, (this.figure.clientWidth || 320) - 8);
  }

  draw() {
    const { key, spec, points } = this;
    this.plot = new uPlot({
      width: this.width(),
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: xScale(spec), y: { range: [0, 1] } },
      axes: [
        xAxis(key, spec),
        { label: "success rate", size: 48, labelSize: 16, values: (u, splits) => splits.map(percent) },
      ],
      series: [{ label: key }, { label: "success rate", stroke: COLOR, width: 0, points: { show: true, size: 8, fill: COLOR } }],
    }, [points.map((p) => p.x), points.map((p) => p.y)], this.target);
    this.observer = new ResizeObserver(() => {
      if (this.width() !== this.plot.width) this.plot.setSize({ width: this.width(), height: HEIGHT });
    });
    this.observer.observe(this.figure);
    return this;
  }

  onKey(event) {
    const last = this.points.length - 1;
    const moves = { ArrowRight: this.index + 1, ArrowLeft: this.index - 1, Home: 0, End: last };
    if (last < 0 || !(event.key in moves)) return;
    event.preventDefault();
    this.index = Math.min(last, Math.max(0, moves[event.key]));
    const point = this.points[this.index];
    this.plot.setCursor({ left: this.plot.valToPos(point.x, "x"), top: this.plot.valToPos(point.y, "y") });
    this.readout.textContent = pointText(this.key, point);
  }

  destroy() {
    this.observer?.disconnect();
    this.plot?.destroy();
  }
}

function bestTable(table, space, sweep) {
  const best = sweep.best_trial;
  const importances = sweep.param_importances || {};
  table.tBodies[0].replaceChildren(...Object.entries(space).map(([key, spec]) => el("tr", {},
    el("th", { scope: "row" }, key),
    el("td", {}, describeSpace(spec)),
    el("td", {}, best && key in best.params ? formatValue(best.params[key]) : "—"),
    el("td", {}, key in importances ? formatNumber(importances[key], 2) : "—"),
  )));
}

/** Draw (or leave as drawn, when nothing changed) the parameters of `sweep` into `container`. */
export function drawParameters(container, table, sweep) {
  const space = (sweep.request && sweep.request.search_space) || {};
  const trials = sweep.trials.filter((trial) => trial.state === "complete");
  const signature = JSON.stringify([sweep.sweep_id, trials.map((t) => t.number), sweep.param_importances]);
  if (signature === drawn) return;
  drawn = signature;
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.param : null;
  for (const chart of charts) chart.destroy();
  container.replaceChildren();
  charts = Object.entries(space).map(([key, spec]) => new ParameterChart(container, key, spec, trials));
  for (const chart of charts) chart.draw();
  bestTable(table, space, sweep);
  if (focused) container.querySelector(`[data-param="${CSS.escape(focused)}"]`)?.focus();
}
