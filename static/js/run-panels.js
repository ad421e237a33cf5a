// The run page's panels drawn from what the service says about a run: status, progress, figures,
// summary, name/tags/notes, model registry, MLflow links and downloads.
import { downloadFile, errorMessage } from "./api.js";
import { showMessage } from "./form.js";
import {
  $,
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

function renderLinks(root, run, mlflowStore) {
  const links = [];
  const mlflow = safeUrl(run.mlflow_url);
  if (mlflow) links.push(el("a", { href: mlflow, target: "_blank", rel: "noopener" }, "Open in MLflow ↗"));
  else if (run.mlflow_run_id) links.push(el("span", { className: "muted" }, mlflowLocalHint(run.mlflow_run_id, mlflowStore())));
  if (run.mlflow_error) links.push(el("span", { className: "muted" }, run.mlflow_error));
  $(root, "#d-links").replaceChildren(...links);
}

function renderDownloads(root, run) {
  const items = downloadItems(run);
  const empty = el("li", { className: "muted" }, isFinal(run.status) ? "No model files." : "Models appear when the run ends.");
  $(root, "#d-downloads").replaceChildren(...(items.length ? items : [empty]));
}

/**
 * What `GET /experiments/{id}` says beyond progress: summary, labels, registry, links, downloads.
 * `mlflowStore()` is the MLflow store's location ("" when unknown).
 */
export function renderRecord(root, run, mlflowStore) {
  $(root, "#d-summary").textContent = summaryText(run);
  renderLabels(root, run);
  const registry = $(root, "#d-registry");
  registry.textContent = registryText(run.registered_model);
  registry.hidden = !run.registered_model;
  renderLinks(root, run, mlflowStore);
  renderDownloads(root, run);
}

function renderProgress(root, state) {
  const percent = progressOf(state) * 100;
  const bar = $(root, "#d-progress");
  bar.setAttribute("aria-valuenow", String(Math.round(percent)));
  bar.dataset.status = state.status;
  bar.firstElementChild.style.width = `${percent.toFixed(2)}%`;
  $(root, "#d-progress-text").textContent = progressText(state);
}

/** The run's progress (from the record, then from WebSocket messages): status, bar, figures, error. */
export function renderProgressState(root, state) {
  const status = $(root, "#d-status");
  status.textContent = state.status;
  status.dataset.status = state.status;
  renderProgress(root, state);
  $(root, "#d-stats").replaceChildren(
    ...statItems(state).map(([label, value]) => el("div", {}, el("dt", {}, label), el("dd", {}, value))),
  );
  const error = $(root, "#d-error");
  error.hidden = !state.error;
  error.textContent = state.error || "";
  const stop = $(root, "#d-stop");
  stop.hidden = isFinal(state.status);
  const tracking = $(root, "#d-tracking");
  tracking.hidden = state.tracking_status !== "degraded";
  tracking.textContent = "MLflow unreachable: metrics are buffered and sent when it is back.";
}
