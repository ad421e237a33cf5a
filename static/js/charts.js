// Live line charts (uPlot, vendored) of one metric against training timesteps, with a hover
// read-out (uPlot's live legend) and optional smoothing.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { el, formatNumber } from "./format.js";
import { latestText, showSmoothedSeries, smooth, smoothableSeries } from "./smoothing.js";

const CHART_HEIGHT = 180;

// One-argument formats: axis ticks call them through Array.map.
const number = (value) => formatNumber(value);
const percent = (value) => `${(value * 100).toFixed(0)}%`;

export const CHARTS = [
  { key: "reward", label: "reward", axis: "reward per maze episode", color: "#2563eb", format: number },
  {
    key: "success_rate",
    label: "success rate",
    axis: "episodes solved",
    color: "#16a34a",
    range: [0, 1],
    format: percent,
  },
  // One point per held-out evaluation, at the timestep it evaluated (`stepKey` in progress messages).
  {
    key: "eval_success_rate",
    stepKey: "eval_timesteps",
    label: "held-out success",
    axis: "held-out mazes solved",
    color: "#7c3aed",
    range: [0, 1],
    format: percent,
  },
  { key: "loss", label: "loss", axis: "loss", color: "#dc2626", format: number },
];

export function legendValue(format) {
  return (u, value) => (value === null || value === undefined ? "—" : format(value));
}

/** uPlot options of a metric against timesteps (axes, scales, live legend) around its `series`. */
export function metricChartOptions(spec, width, height, series) {
  const y = spec.range ? { range: spec.range } : { auto: true };
  return {
    width,
    height,
    legend: { show: true, live: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false }, y },
    axes: [
      { label: "timesteps (environment steps)", size: 40, labelSize: 16 },
      { label: spec.axis, size: 56, labelSize: 16, values: (u, splits) => splits.map(spec.format) },
    ],
    series: [{ label: "step", value: legendValue((step) => step.toLocaleString()) }, ...series],
  };
}

function chartOptions(spec, width, chart) {
  return metricChartOptions(spec, width, CHART_HEIGHT, smoothableSeries(spec.label, spec.color, legendValue(spec.format), chart));
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** Keep the last value logged at each step (sorted input; the final snapshot may repeat a step). */
function dedupeSteps(points) {
  for (let i = points.length - 1; i > 0; i -= 1) {
    if (points[i - 1].step === points[i].step) points.splice(i - 1, 1);
  }
}

/**
 * One metric's chart inside `figure`; `figure.dataset.points` counts the points drawn and
 * `figure.dataset.lastStep` is the step of the last one (tests read them).
 */
export class MetricChart {
  constructor(figure, spec) {
    this.figure = figure;
    this.xs = [];
    this.ys = [];
    this.spec = spec;
    this.weight = 0;
    this.plot = new uPlot(chartOptions(spec, this.width(), this), [this.xs, this.ys, this.ys], figure);
    // The canvas says nothing to a screen reader: the figure's text alternative is this line.
    this.readout = el("p", { className: "chart-latest" });
    figure.append(this.readout);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(figure);
  }

  width() {
    return Math.max(200, this.figure.clientWidth - 8);
  }

  resize() {
    const width = this.width();
    if (width !== this.plot.width) this.plot.setSize({ width, height: CHART_HEIGHT });
  }

  /**
   * Load the history from `GET /experiments/{id}` ([{step, value}]). Live points newer than the
   * history are kept, and so is everything when the history is empty (MLflow not reachable yet).
   */
  reset(points) {
    const clean = (points || []).filter((p) => finite(p.step) && finite(p.value));
    if (!clean.length) return this.render();
    clean.sort((a, b) => a.step - b.step);
    dedupeSteps(clean);
    const lastStep = clean[clean.length - 1].step;
    const newer = this.xs.map((x, i) => ({ step: x, value: this.ys[i] })).filter((p) => p.step > lastStep);
    const merged = clean.concat(newer);
    this.xs = merged.map((p) => p.step);
    this.ys = merged.map((p) => p.value);
    this.render();
  }

  /** Add one live value; a repeated step replaces its value, an older one is ignored. */
  push(step, value) {
    if (!finite(step) || !finite(value)) return;
    const last = this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
    if (step < last) return;
    if (step === last) this.ys[this.ys.length - 1] = value;
    else {
      this.xs.push(step);
      this.ys.push(value);
    }
    this.render();
  }

  /** The step of the last point drawn, -Infinity when none. */
  lastStep() {
    return this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
  }

  /**
   * Add the points a progress message carries ([[step, value], ...], ascending, all logged after step
   * `after`; null: from the start). Returns false, drawing nothing, when this chart ends before
   * `after`: points were missed, and the caller reads the whole history again.
   */
  merge(points, after) {
    if (after !== null && after !== undefined && this.lastStep() < after) return false;
    const known = new Map(this.xs.map((x, i) => [x, this.ys[i]]));
    for (const [step, value] of points || []) if (finite(step) && finite(value)) known.set(step, value);
    const steps = [...known.keys()].sort((a, b) => a - b);
    this.xs = steps;
    this.ys = steps.map((step) => known.get(step));
    this.render();
    return true;
  }

  /** 0 draws the values as logged; up to 0.99 smooths more (the raw curve stays, faint). */
  setSmoothing(weight) {
    this.weight = weight;
    showSmoothedSeries(this.plot, weight);
    this.render();
  }

  render() {
    const smoothed = smooth(this.ys, this.weight);
    this.plot.setData([this.xs, this.ys, smoothed]);
    this.figure.dataset.points = String(this.xs.length);
    this.figure.dataset.lastStep = this.xs.length ? String(this.xs[this.xs.length - 1]) : "";
    const last = this.xs.length - 1;
    const value = latestText(this.spec.format, this.ys[last], smoothed[last], this.weight);
    this.readout.textContent = last < 0
      ? "no data yet"
      : `${this.spec.label}: latest ${value} at step ${this.xs[last].toLocaleString()} (${last + 1} points)`;
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
    this.figure.dataset.points = "0";
    this.readout.remove();
  }
}

/** All charts of the detail view, keyed by metric. */
export function createCharts(root) {
  const charts = {};
  for (const spec of CHARTS) {
    charts[spec.key] = new MetricChart(root.querySelector(`#chart-${spec.key}`), spec);
  }
  return charts;
}
