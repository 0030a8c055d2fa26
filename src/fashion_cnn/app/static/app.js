// The demo page: send images to POST /predict and draw one card per file. Plain DOM, no framework;
// file names come from users, so they only ever go into textContent.
"use strict";

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function bar(ranked) {
  const row = element("div", "bar");
  const track = element("div", "track");
  const fill = element("div", "fill");
  fill.style.width = percent(ranked.probability);
  track.append(fill);
  row.append(element("span", "label", ranked.class_name), track,
             element("span", "value", percent(ranked.probability)));
  return row;
}

function card(result) {
  const node = element("article", result.error ? "card error" : result.unknown ? "card unknown" : "card");
  const head = element("div", "head");
  head.append(element("div", "name", result.filename),
              element("div", "class", result.error || result.class_name));
  if (result.unknown) {
    // class_name is "unknown": the image is unlike the training images; top_k still holds the guesses.
    head.append(element("div", "note", `not like any clothing the model knows (best guess: ${result.top_k[0].class_name})`));
  }
  if (result.error) {
    node.append(head);
    return node;
  }
  const picture = element("img");
  picture.src = result.image;
  picture.alt = "the 28x28 image the model saw";
  picture.title = picture.alt;
  const bars = element("div", "bars");
  bars.append(...result.top_k.map(bar));
  node.append(picture, head, bars);
  if (result.heatmap) node.append(heatmap(result));
  return node;
}

function heatmap(result) {
  // Where the model found its evidence for the class, over the image it saw.
  const figure = element("figure", "heatmap");
  const picture = element("img");
  picture.src = result.heatmap;
  const shown = result.unknown ? result.top_k[0].class_name : result.class_name;  // an unknown's best guess
  picture.alt = `where the model found its evidence for ${shown}`;
  picture.title = picture.alt;
  figure.append(picture, element("figcaption", "", `evidence for ${shown} (HiResCAM)`));
  return figure;
}

async function predict(files) {
  if (files.length === 0) return;
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.name));
  $("status").textContent = `classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  try {
    const response = await fetch("/predict?top_k=5&explain=true", { method: "POST", body: form });
    const answer = await response.json();
    $("results").replaceChildren(...(answer.predictions || []).map(card));
    $("status").textContent = response.ok ? "" : `error ${response.status}: ${detail(answer)}`;
  } catch (error) {
    $("status").textContent = `request failed: ${error.message}`;
  }
}

function detail(answer) {
  // FastAPI's validation errors give a list, our own errors a string.
  return Array.isArray(answer.detail) ? answer.detail.map((d) => d.msg).join("; ") : answer.detail;
}

async function trySample(sample) {
  const blob = await (await fetch(sample.url)).blob();
  predict([new File([blob], sample.name + ".png", { type: "image/png" })]);
}

async function showModel() {
  const meta = await (await fetch("/model")).json();
  const accuracy = meta.test_accuracy == null ? "" : `, test accuracy ${percent(meta.test_accuracy)}`;
  $("model-info").textContent = `model: ${meta.architecture}${accuracy} (${meta.file}); ` +
    `classes: ${meta.class_names.join(", ")}`;
}

async function showSamples() {
  const samples = await (await fetch("/samples")).json();
  const list = $("sample-list");
  samples.forEach((sample) => {
    const button = element("button");
    const thumb = element("img");
    thumb.src = sample.url;
    thumb.alt = sample.name;
    button.title = sample.name;
    button.append(thumb);
    button.addEventListener("click", () => trySample(sample));
    list.append(button);
  });
  $("samples").hidden = samples.length === 0;
}

function setUpDropZone() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    predict([...event.target.files]);
    event.target.value = "";  // choosing the same file again still fires "change"
  });
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    predict([...event.dataTransfer.files]);
  });
}

setUpDropZone();
showModel();
showSamples();
