// One run's page: loads the run (`GET /experiments/{id}`), keeps its charts and progress live over the
// WebSocket, reloads when the record moved on, and stops the run. The panels and the rollout player are
// drawn by run-panels.js and rollout-player.js.
import { api, ApiError, errorMessage, experimentPath, isUnauthorized } from "./api.js";
import { createCharts } from "./charts.js";
import { showMessage } from "./form.js";
import { $, isFinal } from "./format.js";
import { RolloutPlayer } from "./rollout-player.js";
import { renderProgressState, renderRecord } from "./run-panels.js";
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
    this.messages = 0;
    this.chartedEpisode = null;
    this.listeners = [];
    this.loadedAt = 0;
    this.stopping = false;
    this.loads = 0;
    this.player = new RolloutPlayer(root, runId, (node, type, handler) => this.on(node, type, handler));
  }

  start() {
    this.resetView();
    this.charts = createCharts(this.root);
    const charts = () => Object.values(this.charts);
    this.listeners.push(bindSmoothing($(this.root, "#smoothing"), $(this.root, "#smoothing-value"), charts));
    this.on($(this.root, "#d-stop"), "click", () => this.stop());
    this.load("open");
  }

  on(node, type, handler) {
    node.addEventListener(type, handler);
    this.listeners.push(() => node.removeEventListener(type, handler));
  }

  resetView() {
    $(this.root, "#d-id").textContent = this.runId;
    for (const id of ["#d-summary", "#d-progress-text", "#d-message"]) {
      $(this.root, id).textContent = "";
    }
    $(this.root, "#d-status").textContent = "loading…";
    $(this.root, "#d-stats").replaceChildren();
    $(this.root, "#d-links").replaceChildren();
    $(this.root, "#d-downloads").replaceChildren();
    $(this.root, "#d-error").hidden = true;
    $(this.root, "#d-stop").hidden = true;
    this.player.reset();
    this.root.dataset.wsMessages = "0";
    this.setSocketState("idle");
  }

  /** Fetch the run (summary, history, artifacts); retries while the service is unreachable. */
  async load(reason) {
    window.clearTimeout(this.reloadTimer);
    this.loadedAt = Date.now();
    this.loads += 1;
    this.root.dataset.historyLoads = String(this.loads); // tests tell WebSocket growth from reloads
    this.root.dataset.lastLoad = reason; // why (tests and bug reports)
    let run;
    try {
      run = await api(experimentPath(this.runId));
    } catch (error) {
      if (this.disposed) return;
      if (error instanceof ApiError && [404, 422].includes(error.status)) return this.showUnknown(error);
      showMessage($(this.root, "#d-message"), `Could not load the run: ${errorMessage(error)}`, "error");
      if (isUnauthorized(error)) return; // a new key reloads the page's view (KEY_CHANGED)
      this.reloadTimer = window.setTimeout(() => this.load("retry"), RELOAD_RETRY_MS);
      return;
    }
    if (this.disposed) return;
    const message = $(this.root, "#d-message");
    if (message.dataset.kind === "error") showMessage(message, "", "");
    this.applyRun(run);
    if (!isFinal(run.status)) this.ensureSocket();
    else if (this.awaitingFinalData(run)) this.reloadTimer = window.setTimeout(() => this.load("final-data"), RELOAD_RETRY_MS);
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
    renderRecord(this.root, run, this.mlflowStore);
    this.player.showReadiness(run);
    this.renderState();
  }

  pick(run) {
    return { status: run.status, episode: run.episode, total_episodes: run.total_episodes };
  }

  ensureSocket() {
    if (this.socket) return;
    this.socket = openRunSocket(this.runId, {
      onMessage: (message) => this.onMessage(message),
      onState: (state, delay) => this.setSocketState(state, delay),
      onReconnected: () => this.load("reconnected"),
    });
  }

  onMessage(message) {
    this.messages += 1;
    this.root.dataset.wsMessages = String(this.messages);
    const { points, points_after: after, ...progress } = message;
    this.state = { ...this.state, ...progress };
    const missed = this.chartMessage(message, points, after);
    this.renderState();
    const reason = missed ? "missed-points" : this.loadedOnceIsStale(message);
    if (reason) this.load(reason);
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
   * Returns why (a short phrase), or null when the record read last is still current.
   */
  loadedOnceIsStale(message) {
    if (!this.run) return null;
    if (message.type === "final") return "final-message";
    if (message.status !== this.run.status) return `status ${this.run.status} -> ${message.status}`;
    return !this.run.mlflow_run_id && Date.now() - this.loadedAt >= MLFLOW_RECHECK_MS ? "mlflow-recheck" : null;
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
    renderProgressState(this.root, state);
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
      if (isFinal(response.status)) this.load("stopped");
    } catch (error) {
      this.stopping = false;
      showMessage(message, `Could not stop the run: ${errorMessage(error)}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  dispose() {
    this.disposed = true;
    window.clearTimeout(this.reloadTimer);
    this.player.dispose();
    if (this.socket) this.socket.close();
    for (const remove of this.listeners) remove();
    for (const chart of Object.values(this.charts || {})) chart.destroy();
  }
}
