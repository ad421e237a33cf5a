// The runs table: polls `GET /experiments` every few seconds while the list is shown.
import { api, errorMessage } from "./api.js";
import { el, formatPercent, formatTime, isFinal, mlflowLocalHint, safeUrl, shortId } from "./format.js";

const POLL_MS = 3000;
const PAGE_SIZE = 50;

function statusBadge(status) {
  return el("span", { className: "badge", dataset: { status } }, status);
}

function progressCell(run) {
  const percent = Math.round((run.progress || 0) * 100);
  const bar = el(
    "div",
    { className: "progress small", title: `${percent}%`, dataset: { status: run.status } },
    el("div", { className: "progress-fill" }),
  );
  bar.firstChild.style.width = `${((run.progress || 0) * 100).toFixed(2)}%`;
  const text = el("span", { className: "muted" }, `${run.episode} / ${run.total_episodes} (${percent}%)`);
  return [bar, text];
}

function successCell(run) {
  if (run.success_rate === null || run.success_rate === undefined) return "—";
  const text = formatPercent(run.success_rate);
  return isFinal(run.status) ? text : el("span", { className: "muted", title: "rolling, during training" }, text);
}

function detailLink(run) {
  const href = `#/runs/${encodeURIComponent(run.experiment_id)}`;
  const label = run.name ? `${run.name} (${shortId(run.experiment_id)})` : shortId(run.experiment_id);
  const link = el("a", { href, className: "run-link", title: `details of ${run.experiment_id}` }, label);
  const content = [link];
  const tags = Object.entries(run.tags || {}).map(([key, value]) => `${key}=${value}`);
  if (tags.length) content.push(el("br", {}), el("span", { className: "muted run-tags" }, tags.join(" · ")));
  if (run.sweep_id) content.push(el("br", {}), sweepLink(run));
  return content;
}

/** A sweep's trial links to its sweep on the sweeps page. */
function sweepLink(run) {
  const href = `/static/sweeps.html#${encodeURIComponent(run.sweep_id)}`;
  const text = `trial ${run.sweep_trial} of sweep ${shortId(run.sweep_id)}`;
  return el("a", { href, className: "sweep-link", title: `sweep ${run.sweep_id}` }, text);
}

function mlflowLink(run, store, openHints) {
  const url = safeUrl(run.mlflow_url);
  if (url) return el("a", { href: url, target: "_blank", rel: "noopener" }, "MLflow ↗");
  if (!run.mlflow_run_id) return "—";
  const hint = mlflowLocalHint(run.mlflow_run_id, store);
  // A disclosure rather than a tooltip: readable with the keyboard and a screen reader too.
  const details = el("details", { className: "local-store", open: openHints.has(run.experiment_id) });
  details.append(el("summary", {}, "local store"), el("p", {}, hint));
  // Rows are rebuilt on every poll: keep what the person opened.
  details.addEventListener("toggle", () => {
    if (details.open) openHints.add(run.experiment_id);
    else openHints.delete(run.experiment_id);
  });
  return details;
}

function cell(label, ...content) {
  return el("td", { dataset: { label } }, ...content);
}

function runRow(run, store, openHints, selection) {
  const row = el(
    "tr",
    { dataset: { runId: run.experiment_id, status: run.status } },
    selection ? selection.cell(run) : null,
    cell("Run", ...detailLink(run)),
    cell("State", statusBadge(run.status)),
    cell("Algorithm", run.algorithm),
    cell("Policy", run.policy || "planner"),
    cell("Maze", `${run.maze_size}×${run.maze_size} ${run.maze_mode}`),
    cell("Progress", ...progressCell(run)),
    cell("Success", successCell(run)),
    cell("Created", formatTime(run.created_at)),
    cell("Finished", run.finished_at ? formatTime(run.finished_at) : "—"),
    cell("MLflow", mlflowLink(run, store, openHints)),
  );
  return row;
}

function query(filters) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: "0" });
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  return `/experiments?${params}`;
}

/**
 * Start polling into `table`'s body. `filters()` returns {status, algorithm}; `mlflowStore()` the
 * MLflow store's location ("" when unknown); `onProblem(error)` gets the error of a failed poll, or
 * null after a good one; `selection` (optional, see selection.js) adds each row's compare checkbox.
 * Returns {stop(), refresh()}.
 */
export function startRunsTable(table, messageNode, { filters, mlflowStore, onProblem, selection }) {
  const body = table.tBodies[0];
  let timer = null;
  let stopped = false;
  const openHints = new Set();

  async function refresh() {
    window.clearTimeout(timer);
    if (document.hidden) {
      timer = window.setTimeout(refresh, POLL_MS); // a background tab does not poll
      return;
    }
    try {
      const page = await api(query(filters()));
      if (stopped) return;
      // Rows are rebuilt: a keyboard user keeps focus on the checkbox they were on.
      const focused = body.contains(document.activeElement) ? document.activeElement.id : "";
      body.replaceChildren(...page.items.map((run) => runRow(run, mlflowStore(), openHints, selection)));
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      const shown = page.items.length;
      messageNode.textContent = shown ? `${shown} of ${page.total} runs` : "No runs yet: start one above.";
      onProblem(null);
    } catch (error) {
      messageNode.textContent = `Could not load runs: ${errorMessage(error)}`;
      onProblem(error);
    }
    if (!stopped) timer = window.setTimeout(refresh, POLL_MS);
  }

  const onVisible = () => {
    if (!document.hidden && !stopped) refresh();
  };
  document.addEventListener("visibilitychange", onVisible);
  messageNode.textContent = "Loading runs…";
  refresh();
  return {
    refresh,
    stop() {
      stopped = true;
      window.clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}
