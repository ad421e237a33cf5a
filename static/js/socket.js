// A run's progress WebSocket that reconnects with exponential backoff (and jitter) until the run
// ends: the server sends a "final" message and closes with 1000, or closes with 4404 (unknown run).
import { apiKey } from "./apikey.js";

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const CLOSE_UNKNOWN_RUN = 4404;

export function socketUrl(runId) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/training/${encodeURIComponent(runId)}`;
}

export function backoffDelay(attempt) {
  const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** attempt);
  return Math.round(ceiling * (0.5 + Math.random() * 0.5));
}

function parseMessage(event) {
  try {
    const message = JSON.parse(event.data);
    return message && typeof message === "object" ? message : null;
  } catch {
    return null;
  }
}

/**
 * Open the socket of one run.
 * handlers.onMessage(message), handlers.onState(state, detail) with state in
 * "connecting" | "live" | "reconnecting" | "ended" | "unknown", handlers.onReconnected() after a reopen.
 * Returns {close()}.
 */
export function openRunSocket(runId, handlers) {
  let socket = null;
  let timer = null;
  let attempt = 0;
  let everOpened = false;
  let sawFinal = false;
  let disposed = false;

  function connect() {
    handlers.onState(everOpened || attempt ? "reconnecting" : "connecting");
    // Browsers cannot send headers on a WebSocket: the key travels as the "apikey.<key>" subprotocol.
    socket = apiKey() ? new WebSocket(socketUrl(runId), [`apikey.${apiKey()}`]) : new WebSocket(socketUrl(runId));
    socket.addEventListener("open", onOpen);
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", onClose);
  }

  function onOpen() {
    const reopened = everOpened || attempt > 0;
    everOpened = true;
    attempt = 0;
    handlers.onState("live");
    if (reopened && handlers.onReconnected) handlers.onReconnected();
  }

  function onMessage(event) {
    const message = parseMessage(event);
    if (!message) return;
    if (message.type === "final") sawFinal = true;
    handlers.onMessage(message);
  }

  function onClose(event) {
    socket = null;
    if (disposed) return;
    if (event.code === CLOSE_UNKNOWN_RUN) return handlers.onState("unknown");
    if (sawFinal) return handlers.onState("ended");
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = backoffDelay(attempt);
    attempt += 1;
    handlers.onState("waiting", delay);
    timer = window.setTimeout(connect, delay);
  }

  connect();
  return {
    close() {
      disposed = true;
      window.clearTimeout(timer);
      if (socket) socket.close(1000);
    },
  };
}
