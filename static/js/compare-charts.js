// One metric of several runs overlaid on one uPlot chart: a colour per run, uPlot's live legend for
// the hover read-out, and a text line with each run's latest value for screen readers.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { legendValue, metricChartOptions } from "./charts.js";
import { el } from "./format.js";

const CHART_HEIGHT = 220;
// Okabe–Ito: told apart with the common colour-vision deficiencies; past eight, dashes tell runs apart.
export const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#7f7f7f"];

export function runColor(index) {
  return PALETTE[index % PALETTE.length];
}

function options(spec, runs, width) {
  return metricChartOptions(
    spec,
    width,
    CHART_HEIGHT,
    runs.map((run, index) => ({
        label: run.label,
        stroke: runColor(index),
        dash: index >= PALETTE.length ? [6, 4] : undefined,
        width: 2,
        spanGaps: true, // runs log at different steps: each line joins its own points
        points: { size: 4 },
      value: legendValue(spec.format),
    })),
  );
}

/**
 * `spec` is one of charts.js's CHARTS; `runs` is [{label}] in series order. `figure.dataset.series`
 * counts the runs drawn and `figure.dataset.points` lists each run's point count (tests read them).
 */
export class CompareChart {
  constructor(figure, spec, runs) {
    this.figure = figure;
    this.spec = spec;
    this.runs = runs;
    this.curves = runs.map(() => new Map());
    this.plot = new uPlot(options(spec, runs, this.width()), [[], ...runs.map(() => [])], figure);
    this.readout = el("p", { className: "chart-latest" });
    figure.append(this.readout);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(figure);
    this.render();
  }

  width() {
    return Math.max(200, this.figure.clientWidth - 8);
  }

  resize() {
    const width = this.width();
    if (width !== this.plot.width) this.plot.setSize({ width, height: CHART_HEIGHT });
  }

  /** Replace run `index`'s curve with `points` ([{step, value}], the API's history). */
  reset(index, points) {
    const curve = new Map();
    for (const { step, value } of points || []) if (Number.isFinite(step) && Number.isFinite(value)) curve.set(step, value);
    this.curves[index] = curve;
    this.render();
  }

  /** Add points from a progress message ([[step, value]]); false when points after `after` were missed. */
  merge(index, points, after) {
    const curve = this.curves[index];
    const last = curve.size ? Math.max(...curve.keys()) : -Infinity;
    if (after !== null && after !== undefined && last < after) return false;
    for (const [step, value] of points || []) if (Number.isFinite(step) && Number.isFinite(value)) curve.set(step, value);
    this.render();
    return true;
  }

  render() {
    const steps = [...new Set(this.curves.flatMap((curve) => [...curve.keys()]))].sort((a, b) => a - b);
    const series = this.curves.map((curve) => steps.map((step) => (curve.has(step) ? curve.get(step) : null)));
    this.plot.setData([steps, ...series]);
    this.figure.dataset.series = String(this.curves.length);
    this.figure.dataset.points = this.curves.map((curve) => curve.size).join(",");
    this.readout.textContent = `${this.spec.label}, latest: ${this.runs.map((run, i) => this.latest(run, this.curves[i])).join("; ")}`;
  }

  latest(run, curve) {
    if (!curve.size) return `${run.label}: no data yet`;
    const step = Math.max(...curve.keys());
    return `${run.label}: ${this.spec.format(curve.get(step))} at step ${step.toLocaleString()} (${curve.size} points)`;
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
    this.readout.remove();
    this.figure.dataset.points = "0";
    delete this.figure.dataset.series;
  }
}
