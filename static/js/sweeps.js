// The sweeps page: the sweeps list, and for the chosen one ("#<sweep id>") its trials, the objective
// against the trial number, the parameters against the objective (sweep-params.js), "open best run" and
// stop. Polls while the sweep is unfinished.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { api, errorMessage } from "./api.js";
import { el, formatNumber, formatPercent, formatTime, shortId } from "./format.js";
import { drawParameters } from "./sweep-params.js";

const POLL_MS = 3000;
let timer = null;
let plot = null;

async function showList() {
  const body = document.querySelector("#sweeps-table tbody");
  const message = document.getElementById("sweeps-message");
  try {
    const page = await api("/sweeps?limit=100");
    message.textContent = page.total ? "" : "No sweeps yet: POST /sweeps starts one (README “Sweeps”).";
    body.replaceChildren(...page.items.map((sweep) => el("tr", {},
      el("td", {}, el("a", { href: `#${sweep.sweep_id}` }, shortId(sweep.sweep_id))),
      el("td", {}, sweep.status),
      el("td", {}, sweep.algorithm),
      el("td", {}, `${sweep.maze_size}×${sweep.maze_size}`),
      el("td", {}, `${sweep.trials_started} / ${sweep.n_trials}`),
      el("td", {}, formatTime(sweep.created_at)),
    )));
  } catch (error) {
    message.textContent = errorMessage(error);
  }
}

function describeParams(params) {
  return Object.entries(params).map(([key, value]) =>
    `${key}=${typeof value === "number" ? formatNumber(value) : value}`).join(", ");
}

function drawObjective(trials) {
  const done = trials.filter((trial) => trial.state === "complete");
  const figure = document.getElementById("objective-chart");
  const xs = done.map((trial) => trial.number);
  const ys = done.map((trial) => trial.success_rate);
  plot?.destroy();
  plot = null;
  figure.replaceChildren();
  document.getElementById("objective-text").textContent = done.length
    ? `Held-out success rate of ${done.length} completed trials; best ${formatPercent(Math.max(...ys))}.`
    : "No completed trial yet.";
  if (!done.length) return;
  const options = {
    width: Math.max(320, figure.clientWidth || 640),
    height: 220,
    scales: { x: { time: false } },
    // Trials are whole numbers: no ticks between them.
    axes: [{ label: "trial", values: (u, splits) => splits.map((x) => (Number.isInteger(x) ? String(x) : "")) }, { label: "success rate" }],
    series: [{ label: "trial" }, { label: "success rate", stroke: "#3366cc", points: { show: true, size: 7 }, width: 0 }],
  };
  plot = new uPlot(options, [xs, ys], figure);
}

async function showSweep(sweepId) {
  window.clearTimeout(timer);
  const section = document.getElementById("sweep-detail");
  const summary = document.getElementById("sweep-summary");
  section.hidden = false;
  try {
    const sweep = await api(`/sweeps/${encodeURIComponent(sweepId)}`);
    document.getElementById("sweep-title").textContent =
      `Sweep ${shortId(sweep.sweep_id)}: ${sweep.algorithm} on ${sweep.maze_size}×${sweep.maze_size} mazes`;
    const best = sweep.best_trial;
    summary.textContent = `${sweep.status}; ${sweep.trials.length} of ${sweep.n_trials} trials` +
      (best ? `; best: trial ${best.number} at ${formatPercent(best.success_rate)} after ${best.steps_to_best} steps` : "");
    const bestLink = document.getElementById("best-run");
    bestLink.hidden = !sweep.best_run_id;
    if (sweep.best_run_id) bestLink.href = `/#/runs/${sweep.best_run_id}`;
    const stop = document.getElementById("stop-sweep");
    stop.hidden = sweep.status !== "running";
    stop.onclick = async () => {
      stop.disabled = true;
      try { await api(`/sweeps/${encodeURIComponent(sweepId)}/stop`, { method: "POST" }); }
      catch (error) { summary.textContent = errorMessage(error); }
      stop.disabled = false;
      showSweep(sweepId);
    };
    document.querySelector("#trials-table tbody").replaceChildren(...sweep.trials.map((trial) => el("tr", {},
      el("td", {}, String(trial.number)),
      el("td", { title: trial.error || "" }, trial.state),
      el("td", {}, describeParams(trial.params)),
      el("td", {}, trial.success_rate === null ? "—" : formatPercent(trial.success_rate)),
      el("td", {}, trial.steps_to_best === null ? "—" : String(trial.steps_to_best)),
      el("td", {}, trial.run_id ? el("a", { href: `/#/runs/${trial.run_id}` }, shortId(trial.run_id)) : "—"),
    )));
    drawObjective(sweep.trials);
    drawParameters(document.getElementById("param-charts"), document.getElementById("params-table"), sweep);
    if (sweep.status === "running" || sweep.status === "stopping") timer = window.setTimeout(() => showSweep(sweepId), POLL_MS);
  } catch (error) {
    summary.textContent = errorMessage(error);
  }
}

function route() {
  const sweepId = window.location.hash.slice(1);
  showList();
  if (sweepId) showSweep(sweepId);
  else document.getElementById("sweep-detail").hidden = true;
}

window.addEventListener("hashchange", route);
route();
