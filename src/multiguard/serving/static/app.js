// The page of `multiguard serve`: posts one image to /v1/predict and shows the certificate of the answer.
"use strict";

const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");

function text(tag, value, cls) {
  const cell = document.createElement(tag);
  cell.textContent = value;
  if (cls) cell.className = cls;
  return cell;
}

function showLabels(p) {
  const body = document.querySelector("#labels tbody");
  body.replaceChildren();
  const finite = p.radii.filter((r) => r !== "inf").map(Number);
  const scale = Math.max(0.001, ...finite);
  p.labels.forEach((label, i) => {
    const radius = p.radii[i];
    const row = document.createElement("tr");
    row.className = "label-row";
    row.append(text("td", String(i + 1)), text("td", label, "label"));
    const shown = radius === "inf" ? "any" : Number(radius).toFixed(3);
    row.append(text("td", p.trivial[i] ? shown + " (trivial)" : shown, "radius"));
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (radius === "inf" ? 10 : (10 * Number(radius)) / scale) + "rem";
    const cell = document.createElement("td");
    cell.append(bar);
    row.append(cell);
    body.append(row);
  });
}

function showThresholded(p) {
  const box = document.getElementById("thresholded");
  box.replaceChildren();
  if (!p.thresholded) return;
  const list = document.createElement("ul");
  for (const [name, r] of Object.entries(p.thresholded.on)) list.append(text("li", `${name}: on (r < ${r})`, "on"));
  for (const name of p.thresholded.undecided) list.append(text("li", `${name}: undecided`, "undecided"));
  for (const [name, r] of Object.entries(p.thresholded.off)) list.append(text("li", `${name}: off (r < ${r})`, "off"));
  box.append(text("h3", "per label (thresholded)"), list);
}

async function send(file) {
  const error = document.getElementById("error");
  error.textContent = "";
  const form = new FormData();
  form.append("image", file, file.name);
  const seed = document.getElementById("seed").value;
  if (seed !== "") form.append("seed", seed);
  const token = document.getElementById("token").value;
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const started = performance.now();
  const response = await fetch("/v1/predict", { method: "POST", body: form, headers });
  const answer = await response.json();
  if (!response.ok) {
    error.textContent = answer.error || response.statusText;
    return;
  }
  const p = answer.predictions[0];
  document.getElementById("image-name").textContent = p.image;
  showLabels(p);
  showThresholded(p);
  const ms = Math.round(performance.now() - started);
  document.getElementById("facts").textContent =
    `${p.samples} samples, ${ms} ms; noise: ${p.noise}`;
  document.getElementById("result").hidden = false;
}

fileInput.addEventListener("change", () => fileInput.files[0] && send(fileInput.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) send(event.dataTransfer.files[0]);
});
