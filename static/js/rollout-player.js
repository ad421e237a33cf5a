// The run page's rollout player: runs the trained policy on a maze (the seed typed in, a random one, or
// the run's own) through `POST /experiments/{id}/rollout` and animates the agent's path.
import { api, ApiError, errorMessage, experimentPath } from "./api.js";
import { clearErrors, showFieldError, showMessage } from "./form.js";
import { $ } from "./format.js";
import { animateRollout } from "./maze.js";

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

/** The player of run `runId` inside `root`; `on(node, type, handler)` adds a listener removed on leaving. */
export class RolloutPlayer {
  constructor(root, runId, on) {
    this.root = root;
    this.runId = runId;
    this.cancelAnimation = () => {};
    on($(root, "#rollout-form"), "submit", (event) => {
      event.preventDefault();
      this.play(false);
    });
    on($(root, "#rollout-random"), "click", () => this.play(true));
  }

  reset() {
    $(this.root, "#rollout-result").textContent = "";
    $(this.root, "#maze").hidden = true;
    $(this.root, "#rollout-form").elements.maze_seed.value = "";
    clearErrors($(this.root, "#rollout-form"), $(this.root, "#rollout-result"));
  }

  /** The policy can be watched once its ONNX export exists. */
  showReadiness(run) {
    const ready = Boolean(run.onnx && run.onnx.status === "exported");
    for (const button of $(this.root, "#rollout-form").querySelectorAll("button")) button.disabled = !ready;
    const hint = $(this.root, "#rollout-hint");
    hint.textContent = ready
      ? "An empty seed plays a fixed-mode run's own maze (a random one otherwise)."
      : "Available once the run has ended and its model is exported to ONNX.";
  }

  /** Empty seed: the server's default (a fixed-mode run's own maze, else random). */
  body(random) {
    const input = $(this.root, "#rollout-form").elements.maze_seed;
    if (random) input.value = String(randomSeed());
    const text = input.value.trim();
    return text === "" ? {} : { maze_seed: Number.isFinite(Number(text)) ? Number(text) : text };
  }

  async play(random) {
    const form = $(this.root, "#rollout-form");
    const result = $(this.root, "#rollout-result");
    clearErrors(form, result);
    this.cancelAnimation();
    result.dataset.success = "";
    showMessage(result, "Running the trained policy…");
    try {
      const rollout = await api(experimentPath(this.runId, "/rollout"), { method: "POST", body: this.body(random) });
      this.animate(rollout);
    } catch (error) {
      this.showError(form, result, error);
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

  showError(form, result, error) {
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
    this.cancelAnimation();
  }
}
