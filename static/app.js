// Entry point: routes between the runs list ("#/") and one run ("#/runs/<id>") with the URL fragment.
import { api } from "./js/api.js";
import { showDetail } from "./js/detail.js";
import { setupStartForm } from "./js/form.js";
import { startRunsTable } from "./js/runs.js";

const HEALTH_POLL_MS = 10000;

const listView = document.getElementById("view-list");
const detailView = document.getElementById("view-detail");
const servicePill = document.getElementById("service-state");

let current = null;

function setServiceState(state, text) {
  servicePill.dataset.state = state;
  servicePill.textContent = text;
}

async function pollHealth() {
  try {
    const health = await api("/health");
    setServiceState(health.status, health.status === "ok" ? "service ok" : "service degraded");
    servicePill.title = `database: ${health.database.detail}; MLflow: ${health.mlflow.detail}`;
  } catch {
    setServiceState("down", "service unreachable");
  }
  window.setTimeout(pollHealth, HEALTH_POLL_MS);
}

function filters() {
  return {
    status: document.getElementById("filter-status").value,
    algorithm: document.getElementById("filter-algorithm").value,
  };
}

function showList() {
  listView.hidden = false;
  detailView.hidden = true;
  document.title = "RL Maze Training";
  const table = startRunsTable(
    document.getElementById("runs-table"),
    document.getElementById("runs-message"),
    filters,
    (ok) => { if (!ok) setServiceState("down", "service unreachable"); },
  );
  return { dispose: () => table.stop(), refresh: () => table.refresh() };
}

function showRun(runId) {
  listView.hidden = true;
  detailView.hidden = false;
  document.title = `Run ${runId.slice(0, 8)} · RL Maze Training`;
  window.scrollTo(0, 0);
  return showDetail(detailView, runId);
}

function route() {
  if (current) current.dispose();
  const match = window.location.hash.match(/^#\/runs\/([^/?#]+)$/);
  current = match ? showRun(decodeURIComponent(match[1])) : showList();
}

function init() {
  const formMessage = document.getElementById("form-message");
  setupStartForm(document.getElementById("start-form"), formMessage, (response) => {
    window.location.hash = `#/runs/${encodeURIComponent(response.experiment_id)}`;
    formMessage.textContent = "";
  });
  for (const id of ["filter-status", "filter-algorithm"]) {
    document.getElementById(id).addEventListener("change", () => current && current.refresh && current.refresh());
  }
  window.addEventListener("hashchange", route);
  route();
  pollHealth();
}

init();
