// Field errors shared by the forms, and the start-training form.
import { api, ApiError, errorMessage } from "./api.js";

const REQUIRED_NUMBERS = ["total_episodes", "timesteps_per_episode", "maze_size"];
// Sent only when filled in: a service without early stopping rejects the field it does not know.
const OPTIONAL_NUMBERS = ["seed", "n_envs", "target_success_rate"];

/** Remove every field error and the form-level message. */
export function clearErrors(form, messageNode) {
  for (const field of form.querySelectorAll(".field")) {
    field.classList.remove("invalid");
    control(field).removeAttribute("aria-invalid");
    field.querySelector(".field-error").textContent = "";
  }
  if (messageNode) {
    messageNode.textContent = "";
    messageNode.dataset.kind = "";
  }
}

function control(field) {
  return field.querySelector("input, select, textarea");
}

/**
 * Show `message` under the field named `name` (its input is described by it, see index.html);
 * false when the form has no such field.
 */
export function showFieldError(form, name, message) {
  const field = form.querySelector(`.field[data-field="${CSS.escape(String(name))}"]`);
  if (!field) return false;
  field.classList.add("invalid");
  control(field).setAttribute("aria-invalid", "true");
  const node = field.querySelector(".field-error");
  node.textContent = node.textContent ? `${node.textContent}; ${message}` : message;
  return true;
}

export function showMessage(node, text, kind = "info") {
  node.textContent = text;
  node.dataset.kind = kind;
}

/**
 * Put each 422 `detail[]` entry next to its field (loc = ["body", field, ...]);
 * entries without a matching field go to `messageNode`.
 */
export function showValidationErrors(form, messageNode, detail) {
  const leftovers = [];
  for (const item of Array.isArray(detail) ? detail : []) {
    const loc = Array.isArray(item.loc) ? item.loc : [];
    const name = loc[0] === "body" ? loc[1] : undefined;
    if (name === undefined || !showFieldError(form, name, item.msg)) leftovers.push(item.msg);
  }
  if (!Array.isArray(detail)) leftovers.push(String(detail || "invalid request"));
  if (leftovers.length) showMessage(messageNode, leftovers.join("; "), "error");
  else showMessage(messageNode, "Please correct the highlighted fields.", "error");
}

/** A number input's value: a number, the raw text when it is not one, or undefined when empty. */
function numberValue(input) {
  const text = input.value.trim();
  if (text === "") return undefined;
  const number = Number(text);
  return Number.isFinite(number) ? number : text;
}

/** The request body, or throws {field, message} for input the API cannot receive (bad JSON). */
function readStartRequest(form) {
  const elements = form.elements;
  const body = { algorithm: elements.algorithm.value, policy: elements.policy.value };
  for (const name of REQUIRED_NUMBERS) body[name] = numberValue(elements[name]);
  for (const name of OPTIONAL_NUMBERS) {
    const value = numberValue(elements[name]);
    if (value !== undefined) body[name] = value;
  }
  body.maze_mode = elements.maze_mode.value;
  body.device = elements.device.value;
  const hyperparameters = parseHyperparameters(elements.hyperparameters.value);
  if (hyperparameters !== undefined) body.hyperparameters = hyperparameters;
  return body;
}

function parseHyperparameters(text) {
  if (!text.trim()) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw { field: "hyperparameters", message: `not valid JSON: ${error.message}` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw { field: "hyperparameters", message: 'must be a JSON object, e.g. {"learning_rate": 0.0003}' };
  }
  return value;
}

/** Wire the start form; `onStarted(response)` runs after the API accepted a run. */
export function setupStartForm(form, messageNode, onStarted) {
  const button = form.querySelector('button[type="submit"]');
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form, messageNode);
    let body;
    try {
      body = readStartRequest(form);
    } catch (problem) {
      showFieldError(form, problem.field, problem.message);
      return showMessage(messageNode, "Please correct the highlighted fields.", "error");
    }
    button.disabled = true;
    showMessage(messageNode, "Starting…");
    try {
      const response = await api("/training/start", { method: "POST", body });
      showMessage(messageNode, `Run ${response.experiment_id} ${response.run_status}.`, "ok");
      onStarted(response);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) showValidationErrors(form, messageNode, error.detail);
      else showMessage(messageNode, errorMessage(error), "error");
    } finally {
      button.disabled = false;
    }
  });
}
