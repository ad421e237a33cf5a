// Runs side by side ("#/compare/<id>,<id>…"): reward, success and loss curves overlaid, a colour per
// run, and a table of their final figures and settings with the settings that differ highlighted.
// Running runs stay live: each streams its progress and new metric points over its WebSocket.
import { api, ApiError, errorMessage, experimentPath } from "./api.js";
import { CHARTS } from "./charts.js";
import { CompareChart, runColor } from "./compare-charts.js";
import { showMessage } from "./form.js";
import { el, formatDuration, formatNumber, formatPercent, isFinal } from "./format.js";
import { runTitle } from "./selection.js";
import { bindSmoothing } from "./smoothing.js";
import { openRunSocket } from "./socket.js";

const RELOAD_RETRY_MS = 3000;

const asIs = (value) => value;
// Final figures: the label, a run's value (from its state) and its format; `best` says which end of a
// ranked figure is best, and the best run's cell is marked (bold and the word "best").
const RESULTS = [
  { label: "State", value: (s) => s.status, format: asIs },
  { label: "Ended because", value: (s) => s.stop_reason || "—", format: asIs },
  {
    label: "Timesteps",
    value: (s) => `${(s.timesteps || 0).toLocaleString()} / ${(s.total_timesteps || 0).toLocaleString()}`,
    format: asIs,
  },
  { label: "Reward (last 100 maze episodes)", value: (s) => s.reward, format: formatNumber, best: "higher" },
  { label: "Success rate", value: (s) => s.success_rate, format: formatPercent, best: "higher" },
  { label: "Best held-out success", value: (s) => s.best_eval_success_rate, format: formatPercent, best: "higher" },
  { label: "Best path efficiency", value: (s) => s.best_eval_path_efficiency, format: formatPercent, best: "higher" },
  { label: "Loss", value: (s) => s.loss, format: formatNumber, best: "lower" },
  { label: "Steps/s", value: (s) => s.fps, format: formatNumber },
  { label: "Training time", value: (s) => s.elapsed_s, format: formatDuration },
];
// Settings every run has, whether or not MLflow holds its parameters yet.
const BASE_SETTINGS = [
  ["algorithm", (r) => r.algorithm],
  ["policy", (r) => policyOf(r)],
  ["maze_size", (r) => String(r.maze_size)],
  ["maze_mode", (r) => r.maze_mode],
  ["seed", (r) => String(r.training.seed)],
  ["n_envs", (r) => String(r.training.n_envs)],
  ["total_episodes", (r) => String(r.total_episodes)],
  ["total_timesteps", (r) => String(r.training.total_timesteps)],
];

function policyOf(run) {
  return run.policy || (run.training || {}).policy || "planner";
}

/** How the legend and the table's head describe a run beside its name: "PPO · 5×5 · planner". */
function runTraits(run) {
  return `${run.algorithm} · ${run.maze_size}×${run.maze_size} · ${policyOf(run)}`;
}

function runLabel(run) {
  return `${runTitle(run)} · ${runTraits(run)}`;
}

/** Rows of [setting, [value per run]]: the base settings, then every MLflow parameter of any run. */
function settingRows(runs) {
  const rows = BASE_SETTINGS.map(([key, value]) => [key, runs.map((run) => value(run))]);
  const shown = new Set(BASE_SETTINGS.map(([key]) => key));
  const keys = [...new Set(runs.flatMap((run) => Object.keys(run.params || {})))].filter((k) => !shown.has(k)).sort();
  for (const key of keys) rows.push([key, runs.map((run) => (run.params || {})[key] ?? "—")]);
  return rows;
}

function headRow(entries) {
  const cells = entries.map((entry, index) =>
    el(
      "th",
      { scope: "col" },
      el("span", { className: "swatch", style: `background:${runColor(index)}`, "aria-hidden": "true" }),
      el("a", { href: `#/runs/${encodeURIComponent(entry.id)}` }, runTitle(entry.run)),
      el("small", { className: "muted" }, ` ${runTraits(entry.run)}`),
    ),
  );
  return el("thead", {}, el("tr", {}, el("td", {}), ...cells));
}

function section(title, count) {
  return el("tr", { className: "compare-section" }, el("th", { scope: "colgroup", colSpan: count + 1 }, title));
}

function valueRow(label, values) {
  const differs = new Set(values).size > 1;
  const name = el("th", { scope: "row" }, label);
  if (differs) name.append(" ", el("span", { className: "diff-tag" }, "differs"));
  return el("tr", { className: differs ? "differs" : "", dataset: { key: label } }, name, ...values.map((v) => el("td", {}, v)));
}

/**
 * The columns holding a ranked figure's best value (as shown: runs that show the same text tie), or
 * none when fewer than two runs have the figure or all of them show the same.
 */
function bestColumns(values, texts, best) {
  const ranked = values.map((value, index) => [value, index]).filter(([value]) => Number.isFinite(value));
  if (!best || ranked.length < 2) return new Set();
  const numbers = ranked.map(([value]) => value);
  const top = best === "higher" ? Math.max(...numbers) : Math.min(...numbers);
  const topText = texts[ranked.find(([value]) => value === top)[1]];
  const winners = ranked.filter(([, index]) => texts[index] === topText).map(([, index]) => index);
  return winners.length === ranked.length ? new Set() : new Set(winners);
}

function figureRow({ label, value, format, best }, states) {
  const values = states.map((state) => value(state));
  const texts = values.map((each) => format(each));
  const winners = bestColumns(values, texts, best);
  const cells = texts.map((shown, index) =>
    winners.has(index)
      ? el("td", { className: "best" }, el("strong", {}, shown), " ", el("span", { className: "best-tag" }, "best"))
      : el("td", {}, shown),
  );
  return el("tr", { dataset: { key: label } }, el("th", { scope: "row" }, label), ...cells);
}

/** The table of final figures (per run state, the best marked) and settings (differences highlighted). */
export function compareTable(entries) {
  const count = entries.length;
  const results = RESULTS.map((figure) => figureRow(figure, entries.map((e) => e.state)));
  const settings = settingRows(entries.map((e) => e.run)).map(([key, values]) => valueRow(key, values));
  return [
    el("caption", { className: "visually-hidden" }, "Final figures and settings of the compared runs"),
    headRow(entries),
    el("tbody", {}, section("Final figures", count), ...results),
    el("tbody", { className: "settings" }, section("Settings and hyperparameters", count), ...settings),
  ];
}

/** The comparison of `runIds` inside `root`; returns {dispose()}. */
export function showCompare(root, runIds) {
  const view = new Comparison(root, runIds);
  view.start();
  return view;
}

class Comparison {
  constructor(root, runIds) {
    this.root = root;
    this.runIds = [...new Set(runIds)];
    this.entries = [];
    this.charts = {};
    this.disposed = false;
    this.retryTimer = null;
    this.unbindSmoothing = () => {};
    this.onlyDifferences = () => {
      this.$("#compare-table").classList.toggle("only-differences", this.$("#c-only-differences").checked);
    };
  }

  $(selector) {
    return this.root.querySelector(selector);
  }

  async start() {
    this.$("#c-only-differences").addEventListener("change", this.onlyDifferences);
    this.onlyDifferences();
    this.$("#c-legend").replaceChildren();
    this.$("#compare-table").replaceChildren();
    showMessage(this.$("#c-message"), `Loading ${this.runIds.length} runs…`);
    const answers = await Promise.allSettled(this.runIds.map((id) => api(experimentPath(id))));
    if (this.disposed) return;
    const failed = answers.map((a, i) => [a, this.runIds[i]]).filter(([a]) => a.status === "rejected");
    if (failed.some(([a]) => !(a.reason instanceof ApiError && [404, 422].includes(a.reason.status)))) {
      showMessage(this.$("#c-message"), `Could not load the runs: ${errorMessage(failed[0][0].reason)}`, "error");
      this.retryTimer = window.setTimeout(() => this.start(), RELOAD_RETRY_MS);
      return;
    }
    const unknown = failed.map(([, id]) => id);
    this.entries = answers.filter((a) => a.status === "fulfilled").map((a) => this.entry(a.value));
    const note = unknown.length ? `No such run: ${unknown.join(", ")}. ` : "";
    showMessage(this.$("#c-message"), this.entries.length ? note : `${note}Nothing to compare.`, unknown.length ? "error" : "");
    this.build();
  }

  entry(run) {
    return { id: run.experiment_id, run, state: { ...run.training }, socket: null };
  }

  build() {
    const runs = this.entries.map((entry) => ({ label: runLabel(entry.run) }));
    this.$("#c-legend").replaceChildren(
      ...this.entries.map((entry, index) =>
        el("li", {}, el("span", { className: "swatch", style: `background:${runColor(index)}`, "aria-hidden": "true" }), runs[index].label),
      ),
    );
    for (const spec of CHARTS) this.charts[spec.key] = new CompareChart(this.$(`#compare-${spec.key}`), spec, runs);
    const charts = () => Object.values(this.charts);
    this.unbindSmoothing = bindSmoothing(this.$("#c-smoothing"), this.$("#c-smoothing-value"), charts);
    this.entries.forEach((entry, index) => this.showHistory(index));
    this.renderTable();
    this.entries.forEach((entry, index) => this.follow(index));
  }

  showHistory(index) {
    const history = this.entries[index].run.history || {};
    for (const [key, chart] of Object.entries(this.charts)) chart.reset(index, history[key]);
  }

  renderTable() {
    this.$("#compare-table").replaceChildren(...compareTable(this.entries));
    const live = this.entries.filter((entry) => entry.socket).length;
    const pill = this.$("#c-live");
    pill.textContent = live ? `live: ${live} running` : "";
    pill.dataset.state = live ? "live" : "idle";
    pill.title = live ? "WebSocket connected: the curves and figures of running runs update as they train" : "";
  }

  /** A run that has not ended streams its progress; a new state or missed points reload it. */
  follow(index) {
    const entry = this.entries[index];
    if (isFinal(entry.run.status) || entry.socket || this.disposed) return;
    entry.socket = openRunSocket(entry.id, {
      onMessage: (message) => this.onMessage(index, message),
      onState: (state) => {
        if (state === "ended" || state === "unknown") this.unfollow(index);
      },
      onReconnected: () => this.reload(index),
    });
  }

  unfollow(index) {
    const entry = this.entries[index];
    if (entry.socket) entry.socket.close();
    entry.socket = null;
    this.renderTable();
  }

  onMessage(index, message) {
    const entry = this.entries[index];
    const { points, points_after: after, ...progress } = message;
    entry.state = { ...entry.state, ...progress };
    let missed = false;
    if (points) {
      for (const [key, chart] of Object.entries(this.charts)) {
        if (!chart.merge(index, points[key], (after || {})[key])) missed = true;
      }
    }
    this.renderTable();
    if (missed || message.type === "final" || message.status !== entry.run.status) this.reload(index);
  }

  /** Read one run again (its history, parameters and state). */
  async reload(index) {
    let run;
    try {
      run = await api(experimentPath(this.entries[index].id));
    } catch (error) {
      if (!this.disposed) showMessage(this.$("#c-message"), `Could not reload a run: ${errorMessage(error)}`, "error");
      return;
    }
    if (this.disposed) return;
    const entry = this.entries[index];
    entry.run = run;
    entry.state = { ...entry.state, ...run.training };
    this.showHistory(index);
    this.renderTable();
    if (isFinal(run.status) && entry.socket) this.unfollow(index);
  }

  dispose() {
    this.disposed = true;
    window.clearTimeout(this.retryTimer);
    this.unbindSmoothing();
    this.$("#c-only-differences").removeEventListener("change", this.onlyDifferences);
    for (const entry of this.entries) if (entry.socket) entry.socket.close();
    for (const chart of Object.values(this.charts)) chart.destroy();
  }
}
