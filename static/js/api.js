// JSON over fetch, with the API's error bodies kept for the caller.

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
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = parseBody(await response.text());
  if (!response.ok) {
    throw new ApiError(response.status, data && typeof data === "object" ? data.detail : data);
  }
  return data;
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
