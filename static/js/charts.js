// Live line charts (uPlot, vendored) of one metric against training timesteps.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { el, formatNumber } from "./format.js";

const CHART_HEIGHT = 180;

export const CHARTS = [
  { key: "reward", label: "reward", color: "#2563eb" },
  { key: "success_rate", label: "success rate", color: "#16a34a", range: [0, 1] },
  { key: "loss", label: "loss", color: "#dc2626" },
];

function chartOptions(spec, width) {
  const y = spec.range ? { range: spec.range } : { auto: true };
  return {
    width,
    height: CHART_HEIGHT,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false }, y },
    axes: [
      { label: "timesteps", size: 40, labelSize: 16 },
      { size: 56 },
    ],
    series: [{ label: "timesteps" }, { label: spec.label, stroke: spec.color, width: 2, points: { size: 5 } }],
  };
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

/** One metric's chart inside `figure`; `figure.dataset.points` counts the points drawn (tests read it). */
export class MetricChart {
  constructor(figure, spec) {
    this.figure = figure;
    this.xs = [];
    this.ys = [];
    this.spec = spec;
    this.plot = new uPlot(chartOptions(spec, this.width()), [this.xs, this.ys], figure);
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

  render() {
    this.plot.setData([this.xs, this.ys]);
    this.figure.dataset.points = String(this.xs.length);
    const last = this.xs.length - 1;
    this.readout.textContent = last < 0
      ? "no data yet"
      : `${this.spec.label}: latest ${formatNumber(this.ys[last])} at step ${this.xs[last].toLocaleString()} (${last + 1} points)`;
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
