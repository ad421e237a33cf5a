// One run: progress, live charts (history from `GET /experiments/{id}`, then WebSocket messages),
// stop button, downloads, error text, and the rollout player.
import { api, ApiError, downloadFile, errorMessage, experimentPath, isUnauthorized } from "./api.js";
import { createCharts } from "./charts.js";
import { clearErrors, showFieldError, showMessage } from "./form.js";
import {
  el,
  formatBytes,
  formatDuration,
  formatNumber,
  formatPercent,
  formatTime,
  isFinal,
  mlflowLocalHint,
  safeUrl,
  shortId,
} from "./format.js";
import { animateRollout } from "./maze.js";
import { bindSmoothing } from "./smoothing.js";
import { openRunSocket } from "./socket.js";

const RELOAD_RETRY_MS = 3000;
// While a live run has no MLflow run yet (queued, or MLflow still starting), look again this often.
const MLFLOW_RECHECK_MS = 5000;
const STOP_WAIT_S = 10;
const SOCKET_TITLES = {
  connecting: "Opening the WebSocket that streams this run's progress",
  live: "WebSocket connected: progress arrives as the run trains",
  reconnecting: "The progress WebSocket closed; opening it again",
  waiting: "The progress WebSocket closed; it is opened again after a pause",
  unknown: "The service does not know this run",
};
const SOCKET_LABELS = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  waiting: "disconnected",
  ended: "",
  unknown: "unknown run",
  idle: "",
};

function $(root, selector) {
  return root.querySelector(selector);
}

function progressOf(state) {
  if (state.total_timesteps) return Math.min(1, (state.timesteps || 0) / state.total_timesteps);
  return state.progress || 0;
}

function progressText(state) {
  const parts = [`Episode ${state.episode ?? 0} / ${state.total_episodes ?? "?"}`];
  parts.push(formatPercent(progressOf(state)));
  if (state.total_timesteps) parts.push(`${(state.timesteps || 0).toLocaleString()} / ${state.total_timesteps.toLocaleString()} steps`);
  if (state.status === "running") parts.push(`ETA ${formatDuration(state.eta_s)}`);
  return parts.join(" · ");
}

function statItems(state) {
  const items = [
    ["Reward", formatNumber(state.reward)],
    ["Success rate", formatPercent(state.success_rate)],
    ["Loss", formatNumber(state.loss)],
    ["Steps/s", formatNumber(state.fps)],
    ["Elapsed", formatDuration(state.elapsed_s)],
  ];
  if (state.eval_success_rate !== null && state.eval_success_rate !== undefined) {
    items.push(["Held-out success", formatPercent(state.eval_success_rate)]);
  }
  if (state.eval_path_efficiency !== null && state.eval_path_efficiency !== undefined) {
    items.push(["Path efficiency", formatPercent(state.eval_path_efficiency)]);
  }
  return items;
}

function summaryText(run) {
  const training = run.training || {};
  const policy = run.policy || training.policy || "planner";
  const parts = [run.algorithm, `policy ${policy}`, `${run.maze_size}×${run.maze_size} ${run.maze_mode} maze`];
  if (run.sweep_id) parts.push(`trial ${run.sweep_trial} of sweep ${shortId(run.sweep_id)}`);
  if (training.seed !== undefined) parts.push(`seed ${training.seed}`);
  if (training.n_envs) parts.push(`${training.n_envs} envs`);
  if (training.device) parts.push(`device ${training.device}`);
  parts.push(`created ${formatTime(run.created_at)}`);
  if (run.finished_at) parts.push(`finished ${formatTime(run.finished_at)}`);
  if (training.stop_reason) parts.push(`ended: ${training.stop_reason}`);
  return parts.join(" · ");
}

/** The run's name (in the heading), tags and notes: what a team labelled it with. */
function renderLabels(root, run) {
  $(root, "#d-name").textContent = run.name ? `“${run.name}”` : "";
  const tags = Object.entries(run.tags || {}).map(([key, value]) => el("li", {}, `${key}=${value}`));
  const list = $(root, "#d-tags");
  list.replaceChildren(...tags);
  list.hidden = !tags.length;
  const notes = $(root, "#d-notes");
  notes.textContent = run.notes || "";
  notes.hidden = !run.notes;
}

/** Where the run's model stands in the MLflow model registry (`register_as`). */
function registryText(model) {
  if (!model) return "";
  if (model.status === "registered") return `Registered in MLflow as ${model.name}, version ${model.version}.`;
  if (model.status === "failed") return `Registering as ${model.name} failed: ${model.error}`;
  return `To be registered in MLflow as ${model.name} once its model is logged.`;
}

/** The service's own files are fetched with the API key; other links (the MLflow UI's) stay plain. */
function servedHere(href) {
  return new URL(href).origin === window.location.origin;
}

function downloadItem(label, url, note) {
  const href = safeUrl(url);
  if (!href) return null;
  const link = el("a", { href, download: "" }, label);
  if (servedHere(href)) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      downloadFile(href).catch((error) =>
        showMessage(document.getElementById("d-message"), `Download failed: ${errorMessage(error)}`, "error"),
      );
    });
  }
  return el("li", {}, link, note ? el("span", { className: "muted" }, ` ${note}`) : null);
}

function onnxNote(onnx) {
  const parity = onnx.parity_passed ? "parity check passed" : "parity check not passed";
  return `(${formatBytes(onnx.size_bytes)}, opset ${onnx.opset}, ${parity})`;
}

function onnxItem(onnx) {
  if (onnx.status === "exported") return downloadItem("ONNX model", onnx.download_url, onnxNote(onnx));
  if (onnx.status === "pending") return el("li", { className: "muted" }, "ONNX export in progress…");
  return el("li", { className: "error-line" }, `ONNX export failed: ${onnx.error || "unknown error"}`);
}

function artifactItem(artifact) {
  const size = artifact.size_bytes === null || artifact.size_bytes === undefined ? "" : `(${formatBytes(artifact.size_bytes)})`;
  const link = downloadItem(artifact.name, artifact.download_url, size);
  return link || el("li", {}, el("code", {}, artifact.name), el("span", { className: "muted" }, ` ${size}`));
}

function downloadItems(run) {
  const items = [];
  if (run.onnx) items.push(onnxItem(run.onnx));
  if (run.model_zip_url) items.push(downloadItem("SB3 model (.zip)", run.model_zip_url));
  const shown = new Set([run.model_zip_url, run.onnx && run.onnx.download_url].filter(Boolean));
  for (const artifact of run.artifacts || []) {
    if (!shown.has(artifact.download_url)) items.push(artifactItem(artifact));
  }
  return items.filter(Boolean);
}

function rolloutSummary(rollout) {
  const shortest = `shortest path ${rollout.shortest_path_steps} steps`;
  if (!rollout.success) return `Did not reach the goal: ${rollout.steps} steps taken (${shortest}).`;
  const extra = rollout.steps - rollout.shortest_path_steps;
  const verdict = extra <= 0 ? "an optimal path" : `${extra} more than the shortest`;
  return `Reached the goal in ${rollout.steps} steps (${shortest}; ${verdict}).`;
}

function randomSeed() {
  const value = new Uint32Array(1);
  window.crypto.getRandomValues(value);
  return value[0] % 2 ** 31;
}

/**
 * The detail view of `runId` inside `root`; `mlflowStore()` is the MLflow store's location ("" when
 * unknown). Returns {dispose()} to call when leaving it.
 */
export function showDetail(root, runId, mlflowStore) {
  const view = new RunDetail(root, runId, mlflowStore);
  view.start();
  return view;
}

class RunDetail {
  constructor(root, runId, mlflowStore) {
    this.root = root;
    this.runId = runId;
    this.mlflowStore = mlflowStore;
    this.state = {};
    this.run = null;
    this.socket = null;
    this.disposed = false;
    this.reloadTimer = null;
    this.cancelAnimation = () => {};
    this.messages = 0;
    this.chartedEpisode = null;
    this.listeners = [];
    this.loadedAt = 0;
    this.stopping = false;
    this.loads = 0;
  }

  start() {
    this.resetView();
    this.charts = createCharts(this.root);
    const charts = () => Object.values(this.charts);
    this.listeners.push(bindSmoothing($(this.root, "#smoothing"), $(this.root, "#smoothing-value"), charts));
    this.on($(this.root, "#d-stop"), "click", () => this.stop());
    this.on($(this.root, "#rollout-form"), "submit", (event) => {
      event.preventDefault();
      this.playRollout(false);
    });
    this.on($(this.root, "#rollout-random"), "click", () => this.playRollout(true));
    this.load();
  }

  on(node, type, handler) {
    node.addEventListener(type, handler);
    this.listeners.push(() => node.removeEventListener(type, handler));
  }

  resetView() {
    $(this.root, "#d-id").textContent = this.runId;
    for (const id of ["#d-summary", "#d-progress-text", "#d-message", "#rollout-result"]) {
      $(this.root, id).textContent = "";
    }
    $(this.root, "#d-status").textContent = "loading…";
    $(this.root, "#d-stats").replaceChildren();
    $(this.root, "#d-links").replaceChildren();
    $(this.root, "#d-downloads").replaceChildren();
    $(this.root, "#d-error").hidden = true;
    $(this.root, "#d-stop").hidden = true;
    $(this.root, "#maze").hidden = true;
    $(this.root, "#rollout-form").elements.maze_seed.value = "";
    clearErrors($(this.root, "#rollout-form"), $(this.root, "#rollout-result"));
    this.root.dataset.wsMessages = "0";
    this.setSocketState("idle");
  }

  /** Fetch the run (summary, history, artifacts); retries while the service is unreachable. */
  async load() {
    window.clearTimeout(this.reloadTimer);
    this.loadedAt = Date.now();
    this.loads += 1;
    this.root.dataset.historyLoads = String(this.loads); // tests tell WebSocket growth from reloads
    let run;
    try {
      run = await api(experimentPath(this.runId));
    } catch (error) {
      if (this.disposed) return;
      if (error instanceof ApiError && [404, 422].includes(error.status)) return this.showUnknown(error);
      showMessage($(this.root, "#d-message"), `Could not load the run: ${errorMessage(error)}`, "error");
      if (isUnauthorized(error)) return; // a new key reloads the page's view (KEY_CHANGED)
      this.reloadTimer = window.setTimeout(() => this.load(), RELOAD_RETRY_MS);
      return;
    }
    if (this.disposed) return;
    const message = $(this.root, "#d-message");
    if (message.dataset.kind === "error") showMessage(message, "", "");
    this.applyRun(run);
    if (!isFinal(run.status)) this.ensureSocket();
    else if (this.awaitingFinalData(run)) this.reloadTimer = window.setTimeout(() => this.load(), RELOAD_RETRY_MS);
  }

  /** A finished run whose ONNX export or model registration is still running: look again shortly. */
  awaitingFinalData(run) {
    const onnx = run.onnx ? run.onnx.status : null;
    const registry = run.registered_model ? run.registered_model.status : null;
    // Registering follows the export, on MLflow's sender thread: seconds later.
    return onnx === "pending" || (onnx === "exported" && registry === "pending");
  }

  showUnknown(error) {
    $(this.root, "#d-status").textContent = "not found";
    showMessage($(this.root, "#d-message"), `No such run: ${errorMessage(error)}`, "error");
  }

  applyRun(run) {
    this.run = run;
    this.state = { ...run.training, ...this.pick(run) };
    for (const [key, chart] of Object.entries(this.charts)) chart.reset((run.history || {})[key]);
    $(this.root, "#d-summary").textContent = summaryText(run);
    renderLabels(this.root, run);
    const registry = $(this.root, "#d-registry");
    registry.textContent = registryText(run.registered_model);
    registry.hidden = !run.registered_model;
    this.renderLinks(run);
    this.renderDownloads(run);
    this.renderRolloutControls(run);
    this.renderState();
  }

  /** The policy can be watched once its ONNX export exists. */
  renderRolloutControls(run) {
    const ready = Boolean(run.onnx && run.onnx.status === "exported");
    for (const button of $(this.root, "#rollout-form").querySelectorAll("button")) button.disabled = !ready;
    const hint = $(this.root, "#rollout-hint");
    hint.textContent = ready
      ? "An empty seed plays a fixed-mode run's own maze (a random one otherwise)."
      : "Available once the run has ended and its model is exported to ONNX.";
  }

  pick(run) {
    return { status: run.status, episode: run.episode, total_episodes: run.total_episodes };
  }

  ensureSocket() {
    if (this.socket) return;
    this.socket = openRunSocket(this.runId, {
      onMessage: (message) => this.onMessage(message),
      onState: (state, delay) => this.setSocketState(state, delay),
      onReconnected: () => this.load(),
    });
  }

  onMessage(message) {
    this.messages += 1;
    this.root.dataset.wsMessages = String(this.messages);
    const { points, points_after: after, ...progress } = message;
    this.state = { ...this.state, ...progress };
    const missed = this.chartMessage(message, points, after);
    this.renderState();
    if (missed || this.loadedOnceIsStale(message)) this.load();
  }

  /**
   * Messages carry the metric points logged since the previous one (the same points the finished
   * curves have). Without them (no MLflow run yet) the message's own latest values are charted, one
   * per training iteration. Returns true when points were missed and the history must be read again.
   */
  chartMessage(message, points, after) {
    if (points) {
      let missed = false;
      for (const [key, chart] of Object.entries(this.charts)) {
        if (!chart.merge(points[key], (after || {})[key])) missed = true;
      }
      return missed;
    }
    const usesPoints = this.run && this.run.mlflow_run_id;
    if (!usesPoints && this.isNewIteration(message)) {
      for (const [key, chart] of Object.entries(this.charts)) {
        // A final message's held-out figures are the best evaluation's, not a point of the curve.
        if (chart.spec.stepKey && message.type === "final") continue;
        chart.push(message[chart.spec.stepKey || "timesteps"], message[key]);
      }
    }
    return false;
  }

  /**
   * Messages carry progress only: the summary, MLflow link and downloads come from `GET
   * /experiments/{id}`, so fetch it again when the state moved on or the MLflow run may have appeared.
   */
  loadedOnceIsStale(message) {
    if (!this.run) return false;
    if (message.type === "final" || message.status !== this.run.status) return true;
    return !this.run.mlflow_run_id && Date.now() - this.loadedAt >= MLFLOW_RECHECK_MS;
  }

  /**
   * Chart one point per training iteration (as the history has), not one per snapshot: snapshots
   * between iterations repeat the last metrics at newer timesteps.
   */
  isNewIteration(message) {
    const fresh = message.type === "final" || message.episode !== this.chartedEpisode;
    this.chartedEpisode = message.episode;
    return fresh;
  }

  setSocketState(state, delay) {
    const pill = $(this.root, "#d-socket");
    pill.dataset.state = state;
    pill.textContent = state === "waiting" ? `disconnected, retrying in ${Math.ceil(delay / 1000)}s` : SOCKET_LABELS[state];
    pill.title = SOCKET_TITLES[state] || "";
  }

  renderState() {
    const state = this.state;
    if (this.stopping && isFinal(state.status)) {
      this.stopping = false;
      showMessage($(this.root, "#d-message"), `Run ${state.status}.`, "ok");
    }
    const status = $(this.root, "#d-status");
    status.textContent = state.status;
    status.dataset.status = state.status;
    this.renderProgress(state);
    $(this.root, "#d-stats").replaceChildren(
      ...statItems(state).map(([label, value]) => el("div", {}, el("dt", {}, label), el("dd", {}, value))),
    );
    const error = $(this.root, "#d-error");
    error.hidden = !state.error;
    error.textContent = state.error || "";
    const stop = $(this.root, "#d-stop");
    stop.hidden = isFinal(state.status);
    const tracking = $(this.root, "#d-tracking");
    tracking.hidden = state.tracking_status !== "degraded";
    tracking.textContent = "MLflow unreachable: metrics are buffered and sent when it is back.";
  }

  renderProgress(state) {
    const percent = progressOf(state) * 100;
    const bar = $(this.root, "#d-progress");
    bar.setAttribute("aria-valuenow", String(Math.round(percent)));
    bar.dataset.status = state.status;
    bar.firstElementChild.style.width = `${percent.toFixed(2)}%`;
    $(this.root, "#d-progress-text").textContent = progressText(state);
  }

  renderLinks(run) {
    const links = [];
    const mlflow = safeUrl(run.mlflow_url);
    if (mlflow) links.push(el("a", { href: mlflow, target: "_blank", rel: "noopener" }, "Open in MLflow ↗"));
    else if (run.mlflow_run_id) links.push(el("span", { className: "muted" }, mlflowLocalHint(run.mlflow_run_id, this.mlflowStore())));
    if (run.mlflow_error) links.push(el("span", { className: "muted" }, run.mlflow_error));
    $(this.root, "#d-links").replaceChildren(...links);
  }

  renderDownloads(run) {
    const items = downloadItems(run);
    const empty = el("li", { className: "muted" }, isFinal(run.status) ? "No model files." : "Models appear when the run ends.");
    $(this.root, "#d-downloads").replaceChildren(...(items.length ? items : [empty]));
  }

  async stop() {
    const button = $(this.root, "#d-stop");
    const message = $(this.root, "#d-message");
    button.disabled = true;
    this.stopping = true;
    showMessage(message, "Stopping… the run saves its model first.");
    try {
      const path = `/training/stop/${encodeURIComponent(this.runId)}?wait_s=${STOP_WAIT_S}`;
      const response = await api(path, { method: "POST" });
      // The socket may have announced the end first: never go back from it.
      if (!isFinal(this.state.status)) this.state = { ...this.state, status: response.status };
      this.stopping = false;
      showMessage(message, response.message, "ok");
      this.renderState();
      if (isFinal(response.status)) this.load();
    } catch (error) {
      this.stopping = false;
      showMessage(message, `Could not stop the run: ${errorMessage(error)}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  /** Empty seed: the server's default (a fixed-mode run's own maze, else random). */
  rolloutBody(random) {
    const input = $(this.root, "#rollout-form").elements.maze_seed;
    if (random) input.value = String(randomSeed());
    const text = input.value.trim();
    return text === "" ? {} : { maze_seed: Number.isFinite(Number(text)) ? Number(text) : text };
  }

  async playRollout(random) {
    const form = $(this.root, "#rollout-form");
    const result = $(this.root, "#rollout-result");
    clearErrors(form, result);
    this.cancelAnimation();
    result.dataset.success = "";
    showMessage(result, "Running the trained policy…");
    try {
      const rollout = await api(experimentPath(this.runId, "/rollout"), { method: "POST", body: this.rolloutBody(random) });
      this.animate(rollout);
    } catch (error) {
      this.showRolloutError(form, result, error);
    }
  }

  animate(rollout) {
    const result = $(this.root, "#rollout-result");
    const seed = rollout.maze_seed !== undefined ? ` on maze seed ${rollout.maze_seed}` : "";
    showMessage(result, `Playing ${rollout.maze_size}×${rollout.maze_size} maze${seed}…`);
    const canvas = $(this.root, "#maze");
    canvas.setAttribute("aria-label", `Maze ${rollout.maze_size}×${rollout.maze_size}${seed}: the agent is moving`);
    this.cancelAnimation = animateRollout(canvas, rollout, () => {
      canvas.setAttribute("aria-label", `Maze ${rollout.maze_size}×${rollout.maze_size}${seed}: ${rolloutSummary(rollout)}`);
      result.dataset.success = String(rollout.success);
      showMessage(result, rolloutSummary(rollout), rollout.success ? "ok" : "error");
    });
  }

  showRolloutError(form, result, error) {
    if (error instanceof ApiError && error.status === 422 && Array.isArray(error.detail)) {
      for (const item of error.detail) showFieldError(form, "maze_seed", item.msg);
      return showMessage(result, "Please correct the maze seed.", "error");
    }
    if (error instanceof ApiError && error.status === 409) {
      return showMessage(result, `No exported model yet: ${error.message}`, "error");
    }
    showMessage(result, `Could not run the policy: ${errorMessage(error)}`, "error");
  }

  dispose() {
    this.disposed = true;
    window.clearTimeout(this.reloadTimer);
    this.cancelAnimation();
    if (this.socket) this.socket.close();
    for (const remove of this.listeners) remove();
    for (const chart of Object.values(this.charts || {})) chart.destroy();
  }
}
