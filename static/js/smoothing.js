// TensorBoard-style smoothing of the dashboard's curves, shared by a run's charts and the comparison:
// the moving average, the pair of uPlot series a smoothable curve draws (raw, faint while smoothing;
// smoothed), and the "Smoothing" slider that drives them.

// The raw curve behind a smoothed one, as TensorBoard draws it (alpha appended to a #rrggbb colour).
const FAINT = "55";

/** TensorBoard's smoothing: an exponential moving average, debiased at the start. */
export function smooth(values, weight) {
  let average = 0;
  return values.map((value, index) => {
    average = average * weight + (1 - weight) * value;
    return weight > 0 ? average / (1 - weight ** (index + 1)) : value;
  });
}

/**
 * The two uPlot series of one curve: its values as logged (faint while `smoothing.weight` > 0) and
 * their moving average (shown only while smoothing). `value` formats the live legend's value;
 * `extra` is merged into both (dash, spanGaps…).
 * Charts keep them side by side: series 1 and 2, 3 and 4…, so the smoothed ones have even indices.
 */
export function smoothableSeries(label, color, value, smoothing, extra = {}) {
  return [
    { label, stroke: () => (smoothing.weight > 0 ? color + FAINT : color), width: 2, points: { size: 5 }, value, ...extra },
    { label: `${label}, smoothed`, stroke: color, width: 2, points: { show: false }, show: false, value, ...extra },
  ];
}

/** Show the smoothed series (even indices from 2, see smoothableSeries) only while `weight` > 0. */
export function showSmoothedSeries(plot, weight) {
  for (let index = 2; index < plot.series.length; index += 2) {
    if (plot.series[index].show !== weight > 0) plot.setSeries(index, { show: weight > 0 });
  }
}

/** A latest value for the charts' text alternatives: "0.5", or "0.5 (smoothed 0.42)" while smoothing. */
export function latestText(format, raw, smoothed, weight) {
  return weight > 0 ? `${format(raw)} (smoothed ${format(smoothed)})` : format(raw);
}

/**
 * Drive `charts()` (each with `setSmoothing(weight)`) from a range input and show its value in
 * `output`; applies the slider's current value at once. Returns a function that unbinds it.
 */
export function bindSmoothing(slider, output, charts) {
  const apply = () => {
    output.textContent = slider.value;
    for (const chart of charts()) chart.setSmoothing(Number(slider.value));
  };
  apply();
  slider.addEventListener("input", apply);
  return () => slider.removeEventListener("input", apply);
}
