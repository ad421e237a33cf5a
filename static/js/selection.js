// Picking runs in the runs table to compare them: a labelled checkbox per row and a "Compare" button
// that opens "#/compare/<id>,<id>…". The choice survives the table's periodic re-renders.
import { el, shortId } from "./format.js";

export const MIN_COMPARED = 2;
export const MAX_COMPARED = 8;

/** How a run is named to a person: its name when it has one, its short id otherwise. */
export function runTitle(run) {
  const id = shortId(run.experiment_id);
  return run.name ? `${run.name} (${id})` : id;
}

export function comparePath(runIds) {
  return `#/compare/${runIds.map(encodeURIComponent).join(",")}`;
}

/**
 * The selection behind `button` (opens the comparison) and `note` (says how many are chosen).
 * Returns {cell(run), forget()}: `cell` is the table cell with the run's checkbox.
 */
export function createRunSelection(button, note) {
  const chosen = new Set();

  function update() {
    const count = chosen.size;
    button.disabled = count < MIN_COMPARED || count > MAX_COMPARED;
    button.textContent = count ? `Compare ${count} selected runs` : "Compare selected runs";
    note.textContent =
      count > MAX_COMPARED
        ? `At most ${MAX_COMPARED} runs can be compared; ${count} are selected.`
        : count < MIN_COMPARED
          ? `Select ${MIN_COMPARED} or more runs to compare their curves and settings.`
          : "";
  }

  function onOpen() {
    if (chosen.size >= MIN_COMPARED && chosen.size <= MAX_COMPARED) window.location.hash = comparePath([...chosen]);
  }

  button.addEventListener("click", onOpen);
  update();
  return {
    cell(run) {
      const id = `pick-${run.experiment_id}`;
      const box = el("input", { type: "checkbox", id, checked: chosen.has(run.experiment_id) });
      box.addEventListener("change", () => {
        if (box.checked) chosen.add(run.experiment_id);
        else chosen.delete(run.experiment_id);
        update();
      });
      const label = el("label", { htmlFor: id, className: "pick" }, box, el("span", { className: "visually-hidden" }, `Compare run ${runTitle(run)}`));
      return el("td", { dataset: { label: "Compare" }, className: "pick-cell" }, label);
    },
    forget() {
      button.removeEventListener("click", onOpen);
    },
  };
}
