// One metric of several runs overlaid on one uPlot chart: a colour per run, uPlot's live legend for
// the hover read-out, optional smoothing (as a run's own charts), and a text line with each run's
// latest value for screen readers.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { legendValue, metricChartOptions } from "./charts.js";
import { el } from "./format.js";
import { latestText, showSmoothedSeries, smooth, smoothableSeries } from "./smoothing.js";

const CHART_HEIGHT = 220;
// Okabe–Ito: told apart with the common colour-vision deficiencies; past eight, dashes tell runs apart.
export const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#7f7f7f"];

export function runColor(index) {
  return PALETTE[index % PALETTE.length];
}

/** Each run draws two series (smoothing.js): its values as logged, then their moving average. */
function options(spec, runs, width, chart) {
  const series = runs.flatMap((run, index) =>
    smoothableSeries(run.label, runColor(index), legendValue(spec.format), chart, {
      dash: index >= PALETTE.length ? [6, 4] : undefined,
      spanGaps: true, // runs log at different steps: each line joins its own points
    }),
  );
  return metricChartOptions(spec, width, CHART_HEIGHT, series);
}

/** A run's curve as [steps ascending, values]. */
function sorted(curve) {
  const steps = [...curve.keys()].sort((a, b) => a - b);
  return [steps, steps.map((step) => curve.get(step))];
}

/**
 * `spec` is one of charts.js's CHARTS; `runs` is [{label}] in run order. `figure.dataset.series`
 * counts the runs drawn and `figure.dataset.points` lists each run's point count (tests read them).
 */
export class CompareChart {
  constructor(figure, spec, runs) {
    this.figure = figure;
    this.spec = spec;
    this.runs = runs;
    this.weight = 0;
    this.curves = runs.map(() => new Map());
    this.plot = new uPlot(options(spec, runs, this.width(), this), [[], ...runs.flatMap(() => [[], []])], figure);
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

  /** 0 draws the values as logged; up to 0.99 smooths each run's curve more (the raw curves stay, faint). */
  setSmoothing(weight) {
    this.weight = weight;
    showSmoothedSeries(this.plot, weight);
    this.render();
  }

  render() {
    const steps = [...new Set(this.curves.flatMap((curve) => [...curve.keys()]))].sort((a, b) => a - b);
    // Each run is smoothed over its own points; a step it did not log is a gap in its lines.
    const latest = [];
    const series = this.curves.flatMap((curve) => {
      const [own, values] = sorted(curve);
      const averages = smooth(values, this.weight);
      const smoothed = new Map(own.map((step, i) => [step, averages[i]]));
      latest.push(own.length ? [own[own.length - 1], values[values.length - 1], averages[averages.length - 1]] : null);
      return [curve, smoothed].map((line) => steps.map((step) => (line.has(step) ? line.get(step) : null)));
    });
    this.plot.setData([steps, ...series]);
    this.figure.dataset.series = String(this.curves.length);
    this.figure.dataset.points = this.curves.map((curve) => curve.size).join(",");
    const texts = this.runs.map((run, i) => this.latest(run, latest[i], this.curves[i].size));
    this.readout.textContent = `${this.spec.label}, latest: ${texts.join("; ")}`;
  }

  latest(run, last, count) {
    if (!last) return `${run.label}: no data yet`;
    const [step, raw, smoothed] = last;
    return `${run.label}: ${latestText(this.spec.format, raw, smoothed, this.weight)} at step ${step.toLocaleString()} (${count} points)`;
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
    this.readout.remove();
    this.figure.dataset.points = "0";
    delete this.figure.dataset.series;
  }
}
