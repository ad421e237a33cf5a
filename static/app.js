// Entry point: routes between the runs list ("#/") and one run ("#/runs/<id>") with the URL fragment.
import { api, isUnauthorized } from "./js/api.js";
import { KEY_CHANGED, KEY_REFUSED, keyProblem, keyRefused, setupApiKeyPrompt } from "./js/apikey.js";
import { showCompare } from "./js/compare.js";
import { showDetail } from "./js/detail.js";
import { setupStartForm } from "./js/form.js";
import { startRunsTable } from "./js/runs.js";
import { createRunSelection } from "./js/selection.js";

const HEALTH_POLL_MS = 10000;

const listView = document.getElementById("view-list");
const detailView = document.getElementById("view-detail");
const compareView = document.getElementById("view-compare");
const servicePill = document.getElementById("service-state");

let current = null;
let healthTimer = null;
let mlflowStore = "";
// The runs picked for comparison; kept while the person moves between views.
let selection = null;

function setServiceState(state, text) {
  servicePill.dataset.state = state;
  servicePill.textContent = text;
}

async function pollHealth() {
  window.clearTimeout(healthTimer);
  try {
    const health = await api("/health");
    // /health needs no key, so it says nothing about the key the other calls send.
    if (keyRefused()) setServiceState("auth", keyProblem());
    else setServiceState(health.status, health.status === "ok" ? "service ok" : "service degraded");
    servicePill.title = `database: ${health.database.detail}; MLflow: ${health.mlflow.detail}`;
    const local = /^local store (\S+)/.exec(health.mlflow.detail);
    mlflowStore = local ? local[1] : "";
  } catch {
    setServiceState("down", "service unreachable");
  }
  healthTimer = window.setTimeout(pollHealth, HEALTH_POLL_MS);
}

function filters() {
  return {
    status: document.getElementById("filter-status").value,
    algorithm: document.getElementById("filter-algorithm").value,
  };
}

function showList() {
  showOnly(listView);
  document.title = "RL Maze Training";
  const table = startRunsTable(
    document.getElementById("runs-table"),
    document.getElementById("runs-message"),
    {
      filters,
      mlflowStore: () => mlflowStore,
      // A refused key is not an outage: the service answered (KEY_REFUSED updates the header).
      onProblem: (error) => { if (error && !isUnauthorized(error)) setServiceState("down", "service unreachable"); },
      selection,
    },
  );
  return { dispose: () => table.stop(), refresh: () => table.refresh() };
}

function showRun(runId) {
  showOnly(detailView);
  document.title = `Run ${runId.slice(0, 8)} · RL Maze Training`;
  window.scrollTo(0, 0);
  return showDetail(detailView, runId, () => mlflowStore);
}

function showOnly(view) {
  for (const each of [listView, detailView, compareView]) each.hidden = each !== view;
}

function showComparison(runIds) {
  showOnly(compareView);
  document.title = `Compare ${runIds.length} runs · RL Maze Training`;
  window.scrollTo(0, 0);
  return showCompare(compareView, runIds);
}

function route() {
  if (current) current.dispose();
  const hash = window.location.hash;
  const run = hash.match(/^#\/runs\/([^/?#]+)$/);
  const compare = hash.match(/^#\/compare\/([^/?#]+)$/);
  if (run) current = showRun(decodeURIComponent(run[1]));
  else if (compare) current = showComparison(compare[1].split(",").filter(Boolean).map(decodeURIComponent));
  else current = showList();
}

function init() {
  setupApiKeyPrompt();
  selection = createRunSelection(document.getElementById("compare-open"), document.getElementById("compare-note"));
  window.addEventListener(KEY_REFUSED, () => setServiceState("auth", keyProblem()));
  window.addEventListener(KEY_CHANGED, () => {
    setServiceState("unknown", "checking…");
    route();
    pollHealth();
  });
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
