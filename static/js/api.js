// JSON over fetch, with the API's error bodies kept for the caller.
import { apiKey, keyProblem, reportUnauthorized } from "./apikey.js";

export class ApiError extends Error {
  constructor(status, detail) {
    super(describeDetail(status, detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

function describeDetail(status, detail) {
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) return detail.map((item) => item.msg).join("; ");
  return `request failed (HTTP ${status})`;
}

function parseBody(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** fetch a JSON endpoint; throws ApiError (HTTP error) or TypeError (network down). */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json", ...keyHeaders() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw unauthorized();
  const data = parseBody(await response.text());
  if (!response.ok) {
    throw new ApiError(response.status, data && typeof data === "object" ? data.detail : data);
  }
  return data;
}

/** The server's 401 text tells an API client to send a header; a person needs to enter the key. */
function unauthorized() {
  reportUnauthorized();
  return new ApiError(401, keyProblem());
}

function keyHeaders() {
  return apiKey() ? { "X-API-Key": apiKey() } : {};
}

function attachmentName(response, path) {
  const match = /filename="?([^";]+)"?/i.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : path.split("/").pop();
}

/**
 * Save a file the API serves. A plain link cannot send X-API-Key, so the file is fetched with the
 * key and handed to the browser as a blob.
 */
export async function downloadFile(path) {
  const response = await fetch(path, { headers: keyHeaders() });
  if (response.status === 401) throw unauthorized();
  if (!response.ok) {
    const data = parseBody(await response.text());
    throw new ApiError(response.status, data && typeof data === "object" ? data.detail : data);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = attachmentName(response, path);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function isUnauthorized(error) {
  return error instanceof ApiError && error.status === 401;
}

/** A message for any error a call may throw. */
export function errorMessage(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof TypeError) return "the service is unreachable; retrying";
  return String(error && error.message ? error.message : error);
}

export function experimentPath(runId, suffix = "") {
  return `/experiments/${encodeURIComponent(runId)}${suffix}`;
}
