// The API key of a service started with API_KEY: kept in this browser only, asked for once in a dialog;
// after Cancel (or a refused key) a banner says what is wrong and reopens the dialog on demand.

const STORAGE = "rlmaze.apiKey";
export const KEY_CHANGED = "rlmaze:apikey-changed";
export const KEY_REFUSED = "rlmaze:apikey-refused";

const dialog = () => document.getElementById("key-dialog");
const banner = () => document.getElementById("key-banner");

let asked = false;
let refused = false;

/** The key the user entered ("" when none). */
export function apiKey() {
  return window.localStorage.getItem(STORAGE) || "";
}

/** Was a request refused for its key since the key last changed? */
export function keyRefused() {
  return refused;
}

/** What a 401 means to the person at the keyboard. */
export function keyProblem() {
  return apiKey() ? "wrong API key" : "this service needs an API key";
}

/** A request was refused for its key: ask once per page load, afterwards only say so in the banner. */
export function reportUnauthorized() {
  refused = true;
  window.dispatchEvent(new Event(KEY_REFUSED));
  const problem = keyProblem();
  banner().querySelector("[data-problem]").textContent = apiKey()
    ? "Wrong API key: the service refused the key saved in this browser."
    : "This service needs an API key.";
  if (dialog().open) return;
  if (asked) {
    banner().hidden = false;
    return;
  }
  asked = true;
  openKeyDialog(problem);
}

function openKeyDialog(problem) {
  const form = dialog().querySelector("form");
  form.elements.key.value = apiKey();
  dialog().querySelector("[data-problem]").textContent =
    problem === "wrong API key" ? "The key saved in this browser was refused." : "";
  dialog().showModal();
}

/** Wire the dialog and the banner's button (once, at start-up). */
export function setupApiKeyPrompt() {
  const form = dialog().querySelector("form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    window.localStorage.setItem(STORAGE, form.elements.key.value.trim());
    refused = false;
    dialog().close("saved");
    banner().hidden = true;
    window.dispatchEvent(new Event(KEY_CHANGED));
  });
  dialog().addEventListener("close", () => {
    if (dialog().returnValue !== "saved") banner().hidden = false;
    dialog().returnValue = "";
  });
  form.querySelector("[data-cancel]").addEventListener("click", () => dialog().close("cancelled"));
  banner().querySelector("button").addEventListener("click", () => openKeyDialog(keyProblem()));
}
