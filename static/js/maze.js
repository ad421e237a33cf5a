// Draws a rollout's maze on a canvas and animates the agent along its path.
// Rollout: {grid: [[0|1]] (1 = wall), start: [r, c], goal: [r, c], path: [[r, c], ...]}.

const COLORS = {
  wall: "#1f2937",
  floor: "#f8fafc",
  trail: "#bfdbfe",
  start: "#86efac",
  goal: "#fbbf24",
  agent: "#2563eb",
};
const MAX_CANVAS_PX = 480;
const TOTAL_ANIMATION_MS = 5000;

function squareSize(side) {
  return Math.max(4, Math.floor(MAX_CANVAS_PX / side));
}

function fillSquare(ctx, size, [row, col], color) {
  ctx.fillStyle = color;
  ctx.fillRect(col * size, row * size, size, size);
}

function drawAgent(ctx, size, [row, col]) {
  ctx.fillStyle = COLORS.agent;
  ctx.beginPath();
  ctx.arc(col * size + size / 2, row * size + size / 2, size * 0.38, 0, 2 * Math.PI);
  ctx.fill();
}

function drawBoard(ctx, size, rollout) {
  rollout.grid.forEach((row, r) => {
    row.forEach((wall, c) => fillSquare(ctx, size, [r, c], wall ? COLORS.wall : COLORS.floor));
  });
  fillSquare(ctx, size, rollout.start, COLORS.start);
  fillSquare(ctx, size, rollout.goal, COLORS.goal);
}

/** Draw the board with the agent after `index` path squares. */
export function drawFrame(canvas, rollout, index) {
  const ctx = canvas.getContext("2d");
  const size = squareSize(rollout.grid.length);
  drawBoard(ctx, size, rollout);
  for (let i = 0; i < index; i += 1) fillSquare(ctx, size, rollout.path[i], COLORS.trail);
  fillSquare(ctx, size, rollout.start, COLORS.start);
  fillSquare(ctx, size, rollout.goal, COLORS.goal);
  const position = rollout.path[Math.min(index, rollout.path.length - 1)] || rollout.start;
  drawAgent(ctx, size, position);
  canvas.dataset.agent = position.join(",");
}

/** Animate the whole path; calls onDone() at the end. Returns a function that cancels it. */
export function animateRollout(canvas, rollout, onDone) {
  const side = rollout.grid.length;
  canvas.width = canvas.height = side * squareSize(side);
  canvas.hidden = false;
  canvas.dataset.state = "playing";
  const steps = Math.max(1, rollout.path.length);
  const delay = Math.min(120, Math.max(10, TOTAL_ANIMATION_MS / steps));
  let index = 0;
  drawFrame(canvas, rollout, index);
  const timer = window.setInterval(() => {
    index += 1;
    drawFrame(canvas, rollout, index);
    if (index >= steps - 1) {
      window.clearInterval(timer);
      canvas.dataset.state = "done";
      onDone();
    }
  }, delay);
  return () => window.clearInterval(timer);
}
