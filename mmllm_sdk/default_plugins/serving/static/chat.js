// The chat page of `mmllm serve`: reads the model list, sends the conversation to POST v1/chat/completions with
// `stream: true`, and shows the answer as its server-sent events arrive (text, generated images, generated audio).
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "mmllm-api-key"; // sessionStorage: the key lives as long as the tab
// The OpenAI part a file of each modality becomes; any other modality M is {"type": M, M: {data, format}}.
const PART_BUILDERS = {
  image: (file, dataUrl) => ({ type: "image_url", image_url: { url: dataUrl } }),
  audio: (file, dataUrl) => ({ type: "input_audio", input_audio: { data: base64Of(dataUrl), format: extension(file) } }),
  video: (file, dataUrl) => ({ type: "video_url", video_url: { url: dataUrl } }),
};
const ACCEPT = { image: "image/*", audio: "audio/*", video: "video/*" };

const state = {
  model: null, // the id from GET v1/models
  history: [], // earlier turns, text only: [{role, content}]
  attachments: [], // [{modality, file}] for the next message only
  controller: null, // the AbortController of the request in flight
};

// ---- small helpers ----

function extension(file) {
  const dot = file.name.lastIndexOf(".");
  return dot < 0 ? "" : file.name.slice(dot + 1).toLowerCase();
}

function base64Of(dataUrl) {
  return dataUrl.slice(dataUrl.indexOf(",") + 1);
}

// The file as a data: URL; a file the browser gives no type (an unknown suffix) gets one from its modality.
function readDataUrl(file, modality) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      let url = reader.result;
      if (url.startsWith("data:;") || url.startsWith("data:application/octet-stream;")) {
        url = `data:${modality}/${extension(file) || "octet-stream"};` + url.slice(url.indexOf(";") + 1);
      }
      resolve(url);
    };
    reader.onerror = () => reject(new Error(`Could not read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// The message of OpenAI's error object in a failed response, or the status line when the body is not one.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (_) {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}: ${text.slice(0, 300) || "no details"}`;
}

// ---- the model and its modalities ----

async function loadModels() {
  document.body.dataset.state = "loading";
  try {
    const response = await fetch("v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const model = (await response.json()).data[0];
    const modalities = model.modalities || { input: [], output: [] };
    state.model = model.id;
    $("model-name").textContent = model.id;
    $("modalities").textContent =
      `in: ${["text", ...modalities.input.filter((m) => m !== "text")].join(", ")}` +
      ` · out: ${["text", ...(modalities.output || []).filter((m) => m !== "text")].join(", ")}`;
    buildFileInputs(modalities.input.filter((m) => m !== "text"));
    showError("");
    document.body.dataset.state = "ready";
  } catch (error) {
    $("modalities").textContent = "The model list could not be read.";
    showError(error.message);
    document.body.dataset.state = "error";
  }
}

// One labelled file input per input modality: #file-image, #file-audio, #file-depth, ...
function buildFileInputs(modalities) {
  const box = $("file-inputs");
  box.replaceChildren();
  for (const modality of modalities) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "file";
    input.id = `file-${modality}`;
    input.multiple = true;
    input.dataset.modality = modality;
    if (ACCEPT[modality]) input.accept = ACCEPT[modality];
    input.addEventListener("change", () => {
      for (const file of input.files) state.attachments.push({ modality, file });
      input.value = ""; // the same file can be attached again
      renderAttachments();
    });
    label.append(`Attach ${modality}`, input);
    box.append(label);
  }
}

// The attached files as chips, each with a button that removes it.
function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.attachments.forEach((item, index) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.modality = item.modality;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    remove.addEventListener("click", () => {
      state.attachments.splice(index, 1);
      renderAttachments();
    });
    chip.append(`${item.modality}: ${item.file.name}`, remove);
    box.append(chip);
  });
}

// ---- the conversation ----

// A new <li class="message ROLE"> with a role line and a text <div>; returns the <li>.
function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role === "user" ? "You" : state.model || "Assistant";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function addNote(item, className, text) {
  const note = document.createElement("div");
  note.className = className;
  note.textContent = text;
  item.append(note);
}

// Generated outputs: image_url parts become <img>, base64 WAV becomes <audio controls>.
function addImages(item, images) {
  for (const part of images || []) {
    const img = document.createElement("img");
    img.src = part.image_url.url;
    img.alt = "generated image";
    item.append(img);
  }
}

function addAudio(item, base64) {
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.src = `data:audio/wav;base64,${base64}`;
  item.append(audio);
}

// The user's message as OpenAI content: a string, or text and one part per attached file.
async function userContent(text, attachments) {
  if (!attachments.length) return text;
  const parts = text ? [{ type: "text", text }] : [];
  for (const { modality, file } of attachments) {
    const dataUrl = await readDataUrl(file, modality);
    const build = PART_BUILDERS[modality];
    parts.push(
      build ? build(file, dataUrl) : { type: modality, [modality]: { data: base64Of(dataUrl), format: extension(file) } },
    );
  }
  return parts;
}

// Reads an SSE body line by line and calls onEvent(parsed JSON) for each `data:` line until `data: [DONE]`.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = buffer.split(/\r?\n/);
    buffer = done ? "" : lines.pop(); // an unfinished line waits for the next read
    for (const line of lines) {
      if (!line.startsWith("data:")) continue; // blank separators, comments (": ping"), event: lines
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
    if (done) return;
  }
}

async function send() {
  const text = $("prompt").value.trim();
  if (state.controller || (!text && !state.attachments.length)) return;
  if (!state.model) {
    showError("The model list has not been read yet: enter the API key if the server needs one.");
    return;
  }
  const attachments = state.attachments;
  state.attachments = [];
  renderAttachments();
  $("prompt").value = "";
  showError("");

  const userItem = addMessage("user", text);
  if (attachments.length) addNote(userItem, "files", attachments.map((a) => `${a.modality}: ${a.file.name}`).join(", "));
  const item = addMessage("assistant", "");
  const body = item.querySelector(".text");
  item.dataset.state = "streaming";
  state.controller = new AbortController();
  $("send").disabled = true;

  let answer = "";
  let audio = "";
  try {
    const request = {
      model: state.model,
      messages: [...state.history, { role: "user", content: await userContent(text, attachments) }],
      stream: true,
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value),
    };
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(request),
      signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    // Each chunk's delta adds text, images or a piece of the audio; the last one carries the usage.
    const onChunk = (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = (chunk.choices || [])[0] || {};
      const delta = choice.delta || choice.message || {}; // a server that ignores `stream` sends one message
      if (delta.content) {
        answer += delta.content;
        body.textContent = answer;
      }
      addImages(item, delta.images);
      if (delta.audio && delta.audio.data) audio += delta.audio.data;
      if (chunk.usage) addNote(item, "meta", `${chunk.usage.completion_tokens} tokens`);
    };
    if ((response.headers.get("Content-Type") || "").includes("text/event-stream")) {
      await readEvents(response, onChunk);
    } else {
      onChunk(await response.json());
    }
    if (audio) addAudio(item, audio);
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    item.dataset.state = "done";
  } catch (error) {
    item.dataset.state = "error";
    if (error.name !== "AbortError") showError(error.message);
  } finally {
    state.controller = null;
    $("send").disabled = false;
  }
}

function newConversation() {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.attachments = [];
  renderAttachments();
  $("messages").replaceChildren();
  showError("");
  $("prompt").focus();
}

// ---- wiring ----

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
$("new-conversation").addEventListener("click", newConversation);
$("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  loadModels(); // the list may have been refused without the key
});
loadModels();
