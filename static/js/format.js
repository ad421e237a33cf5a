// Formatting and small DOM helpers shared by the views. Everything user-visible goes through
// textContent (never innerHTML), so run data cannot inject markup.

/** Build an element: el("a", {href: "#", className: "x"}, "text", otherNode). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** The first element under `root` that matches `selector` (null when none). */
export function $(root, selector) {
  return root.querySelector(selector);
}

/** The API's datetimes may lack a zone; the service stores UTC. */
export function parseTime(value) {
  if (!value) return null;
  const hasZone = /(Z|[+-]\d\d:?\d\d)$/i.test(value);
  const date = new Date(hasZone ? value : `${value}Z`);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function formatTime(value) {
  const date = parseTime(value);
  if (!date) return "—";
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = total % 60;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${secs}s`;
  return `${secs}s`;
}

export function formatPercent(value, digits = 0) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  return `${(value * 100).toFixed(digits)}%`;
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString();
  return Number(value.toPrecision(digits)).toString();
}

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** An http(s) URL from the API, resolved against the page; null for anything else (javascript:, …). */
export function safeUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/**
 * Where a run's MLflow data is when no MLflow UI address is known (the service's own local store),
 * and how to browse it; `store` is the location /health reports ("" when not known yet).
 */
export function mlflowLocalHint(mlflowRunId, store) {
  const uri = store || "<the service's MLFLOW_TRACKING_URI>";
  return (
    `MLflow run ${mlflowRunId} is in the service's local store. To browse it, run ` +
    `"mlflow ui --backend-store-uri ${uri}" on the server (set MLFLOW_UI_URL to get links here).`
  );
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

export const FINAL_STATES = new Set(["completed", "failed", "stopped", "interrupted"]);

export function isFinal(status) {
  return FINAL_STATES.has(status);
}
