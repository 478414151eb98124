// audioprep web page: plain JS, no build step, no third-party code.
// Talks only to the API under /api (see docs/web.md and docs/http-api.md).

const $ = (sel) => document.querySelector(sel);
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STORE_JOBS = "audioprep.jobs";
const STORE_SOURCE = "audioprep.source";
const STORE_KEY = "audioprep.apiKey";
const STORE_EDIT = "audioprep.edit."; // + the source's ingest job id
// The API says, in the page it serves, whether it wants a key: "key", "open" (or "" if unknown).
const AUTH_MODE = (document.querySelector('meta[name="audioprep-auth"]') || {}).content || "";

// ---- plain words for job errors and stages ----------------------------------------------

const ERROR_WORDS = {
  unsupported_media: "This file is not audio we can read: the format is unknown or the file is damaged.",
  no_audio_stream: "This file has no sound track.",
  empty_file: "The file is empty.",
  corrupt_media: "The file is damaged and could not be decoded.",
  too_long: "The audio is longer than this server accepts.",
  too_large: "The file is larger than this server accepts.",
  unsupported_url: "That link does not point to audio we can fetch.",
  source_not_found: "Nothing was found at that link (or the source is gone).",
  download_failed: "Fetching the link failed. Check that it works in your browser and try again.",
  forbidden_url: "That address is not allowed (private or local network addresses are blocked).",
  invalid_recipe: "The edit settings are not valid.",
  render_failed: "Rendering failed.",
  storage_unavailable: "Storage was not reachable. Try again in a moment.",
  max_deliveries: "The job failed after several attempts.",
  internal_error: "Something went wrong on the server.",
  cancelled: "Cancelled.",
};

const STAGE_WORDS = {
  storing: "Storing",
  analysing: "Analysing",
  analyzing: "Analysing",
  fetching: "Fetching",
  downloading: "Downloading",
  probing: "Reading the file",
  rendering: "Rendering",
  queued: "Waiting for a worker",
};

// For these the server's message adds facts (which limit, which HTTP status, which field).
const WITH_DETAIL = new Set([
  "too_long", "too_large", "download_failed", "source_not_found", "unsupported_url",
  "invalid_recipe", "render_failed", "forbidden_url",
]);

function errorWords(error) {
  if (!error) return "Failed.";
  const base = ERROR_WORDS[error.code];
  const msg = (error.message || "").trim();
  if (!base) return msg || `Failed (${error.code}).`;
  return msg && WITH_DETAIL.has(error.code) ? `${base} Details: ${msg}` : base;
}

function stageWords(view) {
  if (view.status === "pending") return "Waiting for a worker";
  if (view.status === "completed") return "Done";
  if (view.status === "cancelled") return "Cancelled";
  if (view.status === "failed") return "Failed";
  const s = view.stage || "";
  return STAGE_WORDS[s] || (s ? s[0].toUpperCase() + s.slice(1) : "Working");
}

// ---- formatting --------------------------------------------------------------------------

function fmtTime(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const neg = seconds < 0;
  let s = Math.abs(seconds);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const sec = s.toFixed(3).padStart(6, "0");
  const body = h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  return neg ? `-${body}` : body;
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fmtDb(v, unit) {
  return typeof v === "number" && Number.isFinite(v) ? `${v.toFixed(1)} ${unit}` : "–";
}

function channelWords(n) {
  return n === 1 ? "mono" : n === 2 ? "stereo" : n ? `${n} channels` : "";
}

// ---- API ---------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(STORE_KEY) || "";
}

function openKeyBox() {
  const box = $("#key-box");
  box.hidden = false;
  box.open = true;
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiProblem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "http_error";
    this.field = body && body.field;
    this.body = body;
  }
}

async function parseBody(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 300) };
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json, application/problem+json", ...authHeaders() };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiProblem(0, { code: "network", detail: "Could not reach the server. Is it running?" });
  }
  const data = await parseBody(resp);
  if (!resp.ok) {
    if (resp.status === 401) openKeyBox();
    throw new ApiProblem(resp.status, data);
  }
  return data;
}

function uploadFile(file, onProgress) {
  // XMLHttpRequest, not fetch: it is the one that reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/audio/ingest");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("Accept", "application/json, application/problem+json");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress((100 * e.loaded) / e.total);
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText || "null");
      } catch {
        data = { detail: (xhr.responseText || "").slice(0, 300) };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        if (xhr.status === 401) openKeyBox();
        reject(new ApiProblem(xhr.status, data));
      }
    };
    xhr.onerror = () =>
      reject(new ApiProblem(0, { code: "network", detail: "The upload was interrupted: could not reach the server." }));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// ---- following a job: SSE first, polling as the fallback and the safety net --------------

const SSE_TYPES = [
  "JobRequested", "JobStarted", "JobProgressed", "JobRetrying",
  "JobCompleted", "JobFailed", "JobCancelRequested", "JobCancelled",
];

function eventToPatch(ev) {
  const t = String(ev.type || "").replace(/^Job/, "").toLowerCase();
  switch (t) {
    case "started":
      return { status: "running", stage: ev.stage || "started", attempt: ev.attempt };
    case "progressed":
      return { status: "running", progress: ev.progress, stage: ev.stage };
    case "retrying":
      return { status: "running", stage: `retrying: ${ev.error ? ev.error.message : ""}` };
    case "cancelrequested":
    case "cancel_requested":
      return { cancelRequested: true };
    case "completed":
    case "failed":
    case "cancelled":
      return { terminal: true };
    default:
      return {};
  }
}

/** Follow a job to its end; calls onUpdate(view) along the way; resolves with the final view. */
function followJob(jobId, onUpdate) {
  return new Promise((resolve) => {
    let view = { jobId, status: "pending", progress: 0, stage: "" };
    let done = false;
    let es = null;
    let pollTimer = null;
    let pollDelay = 250;

    const finish = (final) => {
      if (done) return;
      done = true;
      if (es) es.close();
      clearTimeout(pollTimer);
      onUpdate(final);
      resolve(final);
    };

    const poll = async () => {
      if (done) return;
      try {
        const v = await api("GET", `/api/audio/jobs/${jobId}`);
        if (done) return;
        // Never go backwards: an SSE event may be ahead of the projected view.
        if (!(v.status === view.status && (v.progress || 0) < (view.progress || 0))) view = v;
        else view = { ...v, progress: view.progress, stage: view.stage };
        if (TERMINAL.has(v.status)) return finish(v);
        onUpdate(view);
      } catch (err) {
        if (err instanceof ApiProblem && err.status && err.status !== 404 && err.status < 500) {
          return finish({ ...view, status: "failed", error: { code: err.code, message: err.message } });
        }
      }
      // With SSE alive, the poll is only a slow safety net.
      const delay = es ? 2000 : pollDelay;
      pollDelay = Math.min(pollDelay * 1.5, 1000);
      pollTimer = setTimeout(poll, delay);
    };

    const onEvent = (msg) => {
      if (done) return;
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (!ev.type && msg.type && msg.type !== "message") ev.type = msg.type;
      const patch = eventToPatch(ev);
      if (patch.terminal) {
        // The view carries the result and downloadUrl: fetch it now, fast.
        es.close();
        es = null;
        clearTimeout(pollTimer);
        pollDelay = 100;
        poll();
        return;
      }
      view = { ...view, ...Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) };
      onUpdate(view);
    };

    // EventSource cannot send an Authorization header: with an API key, poll only.
    if (window.EventSource && !apiKey()) {
      try {
        es = new EventSource(`/api/audio/jobs/${jobId}/events`);
        for (const t of SSE_TYPES) es.addEventListener(t, onEvent);
        es.onmessage = onEvent;
        es.onerror = () => {
          if (!es) return;
          // CONNECTING: a dropped stream that the browser resumes with Last-Event-ID.
          // CLOSED: no SSE here (HTTP error, wrong type): polling takes over for good.
          if (es.readyState === EventSource.CLOSED) es = null;
          clearTimeout(pollTimer);
          pollTimer = setTimeout(poll, 100);
        };
      } catch {
        es = null;
      }
    }
    poll();
  });
}

// ---- session job list --------------------------------------------------------------------

const jobs = new Map(JSON.parse(sessionStorage.getItem(STORE_JOBS) || "[]"));

function saveJobs() {
  sessionStorage.setItem(STORE_JOBS, JSON.stringify([...jobs.entries()].slice(-50)));
}

function recordJob(jobId, kind, label, view) {
  const prev = jobs.get(jobId) || { jobId, kind, label, createdAt: Date.now() };
  const next = { ...prev, label: label || prev.label };
  if (view) {
    next.status = view.status;
    next.progress = view.progress || 0;
    next.stage = stageWords(view);
    next.error = view.error ? errorWords(view.error) : null;
    next.errorRaw = view.error ? `${view.error.code}: ${view.error.message}` : null;
    next.fromCache = !!(view.result && view.result.fromCache);
    if (view.downloadUrl && kind === "save") next.downloadUrl = view.downloadUrl;
  } else {
    next.status = next.status || "pending";
  }
  jobs.delete(jobId);
  jobs.set(jobId, next);
  saveJobs();
  renderJobs();
}

function renderJobs() {
  const body = $("#job-table tbody");
  body.textContent = "";
  const rows = [...jobs.values()].reverse();
  $("#jobs-empty").hidden = rows.length > 0;
  $("#job-table").hidden = rows.length === 0;
  for (const j of rows) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = j.jobId;
    tr.className = `job-${j.status}`;
    const what = document.createElement("td");
    what.textContent = j.label;
    what.title = `job ${j.jobId}`;
    const kind = document.createElement("td");
    kind.textContent = j.kind;
    const status = document.createElement("td");
    status.className = "job-status";
    status.textContent =
      j.status === "running" ? `running ${j.progress || 0}%` : j.status + (j.fromCache ? " (cached)" : "");
    const details = document.createElement("td");
    details.className = "job-details";
    if (j.error) {
      details.textContent = j.error;
      details.title = j.errorRaw || "";
    } else if (j.downloadUrl) {
      const a = document.createElement("a");
      a.href = j.downloadUrl;
      a.textContent = "download";
      a.setAttribute("download", "");
      details.append(a);
    } else if (!TERMINAL.has(j.status)) details.textContent = j.stage || "";
    tr.append(what, kind, status, details);
    body.append(tr);
  }
}

// ---- state -------------------------------------------------------------------------------

const state = {
  source: null, // {jobId, sourceKey, durationMs, ...result, title}
  peaks: null,
  sel: null, // [startS, endS] or null = everything
  previewCache: new Map(), // canonical request -> {url, jobId, recipe, report}
  playing: null, // the preview in the player: {key, url, recipe, report}
  saveJobId: null,
};

function show(el, on = true) {
  el.hidden = !on;
}

function setStatus(prefix, label, pct) {
  show($(`#${prefix}-status`));
  $(`#${prefix}-label`).textContent = label;
  $(`#${prefix}-pct`).textContent = pct == null ? "" : `${Math.round(pct)}%`;
  const bar = $(`#${prefix}-progress`);
  if (pct == null) bar.removeAttribute("value");
  else bar.value = pct;
}

function setError(id, text) {
  const el = $(id);
  el.classList.remove("neutral");
  el.textContent = text || "";
  show(el, !!text);
}

// ---- ingest ------------------------------------------------------------------------------

async function ingestFile(file) {
  setError("#ingest-error", "");
  setStatus("ingest", `Uploading ${file.name}`, 0);
  let accepted;
  try {
    accepted = await uploadFile(file, (pct) => setStatus("ingest", `Uploading ${file.name}`, pct));
  } catch (err) {
    show($("#ingest-status"), false);
    setError("#ingest-error", `Upload failed: ${err.message}`);
    return;
  }
  await followIngest(accepted.jobId, file.name);
}

function sourceKind(url) {
  try {
    const host = new URL(url).hostname.replace(/^www\.|^m\./, "");
    return /(^|\.)(youtube\.com|youtu\.be|youtube-nocookie\.com)$/.test(host) ? "youtube" : "url";
  } catch {
    return "url";
  }
}

async function ingestUrl(url) {
  setError("#ingest-error", "");
  setStatus("ingest", "Sending the link", null);
  let accepted;
  try {
    accepted = await api("POST", "/api/audio/ingest", { source: sourceKind(url), url });
  } catch (err) {
    show($("#ingest-status"), false);
    setError("#ingest-error", `That link was not accepted: ${err.message}`);
    return;
  }
  await followIngest(accepted.jobId, url);
}

async function followIngest(jobId, label) {
  recordJob(jobId, "ingest", label);
  const view = await followJob(jobId, (v) => {
    recordJob(jobId, "ingest", label, v);
    setStatus("ingest", `${stageWords(v)}: ${label}`, v.progress || 0);
  });
  if (view.status === "completed") {
    setStatus("ingest", `Ready: ${label}`, 100);
    await loadSource(view, label);
  } else {
    show($("#ingest-status"), false);
    setError(
      "#ingest-error",
      view.status === "cancelled" ? `${label}: cancelled.` : `Could not use ${label}: ${errorWords(view.error)}`,
    );
  }
}

async function loadSource(view, label) {
  const r = view.result || {};
  state.source = { jobId: view.jobId, label, ...r };
  state.previewCache.clear();
  sessionStorage.setItem(STORE_SOURCE, JSON.stringify({ jobId: view.jobId, label }));
  const title = r.title || label || "Source";
  $("#src-title").textContent = title;
  $("#src-duration").textContent = fmtTime((r.durationMs || 0) / 1000);
  const fmt = [
    (r.container || "").toUpperCase(),
    r.codec,
    r.sampleRate ? `${(r.sampleRate / 1000).toFixed(1)} kHz` : "",
    channelWords(r.channels),
    r.bitRate ? `${Math.round(r.bitRate / 1000)} kbps` : "",
  ].filter(Boolean);
  $("#src-format").textContent = fmt.join(" · ") || "–";
  const loud = r.loudness || {};
  $("#src-lufs").textContent = fmtDb(loud.integratedLufs, "LUFS");
  $("#src-peak").textContent = fmtDb(loud.truePeakDb, "dBTP");
  $("#src-lra").textContent = fmtDb(loud.lra, "LU");
  renderAnalysis(r.analysis);
  $("#save-name").placeholder = label && !/^https?:/.test(label) ? label.replace(/\.[^.]+$/, "") : "audio";
  show($("#source"));
  show($("#edit"));
  show($("#save"));
  loadPresets();
  resetRecipe();
  resetPlayer();
  restoreEdit(); // what this tab last had for this source (survives a reload)
  show($("#save-done"), false);
  show($("#save-status"), false);
  show($("#save-report"), false);
  show($("#save-voice"), false);
  state.peaks = null;
  drawWave();
  try {
    state.peaks = await api("GET", `/api/audio/jobs/${view.jobId}/peaks`);
  } catch (err) {
    state.peaks = { error: err.message };
  }
  drawWave();
}

// ---- waveform ----------------------------------------------------------------------------

function durationS() {
  return state.source ? (state.source.durationMs || 0) / 1000 : 0;
}

function drawWave() {
  const canvas = $("#wave");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = "#10151d";
  g.fillRect(0, 0, w, h);
  const mid = h / 2;
  g.fillStyle = "#2a3444";
  g.fillRect(0, Math.floor(mid), w, 1);
  const p = state.peaks;
  if (!p || p.error || !p.min || !p.min.length) {
    g.fillStyle = "#8796ab";
    g.font = "14px system-ui, sans-serif";
    g.textAlign = "center";
    g.fillText(p && p.error ? `No waveform: ${p.error}` : "Loading waveform…", w / 2, mid - 8);
    updateSelLabels();
    return;
  }
  const n = Math.min(p.min.length, p.max.length);
  let top = 0;
  for (let i = 0; i < n; i++) top = Math.max(top, Math.abs(p.min[i]), Math.abs(p.max[i]));
  // Quiet sources still get a readable shape; the scale is shown nowhere, so this is honest.
  const scale = top > 0 ? Math.min(1 / top, 8) * 0.95 : 1;
  const dur = durationS();
  const [a, b] = state.sel || [0, dur];
  const xa = dur ? (a / dur) * w : 0;
  const xb = dur ? (b / dur) * w : w;
  for (let x = 0; x < w; x++) {
    const i0 = Math.floor((x * n) / w);
    const i1 = Math.max(i0 + 1, Math.floor(((x + 1) * n) / w));
    let lo = 1;
    let hi = -1;
    for (let i = i0; i < i1 && i < n; i++) {
      if (p.min[i] < lo) lo = p.min[i];
      if (p.max[i] > hi) hi = p.max[i];
    }
    if (hi < lo) continue;
    const y1 = mid - hi * scale * mid;
    const y2 = mid - lo * scale * mid;
    g.fillStyle = x >= xa && x <= xb ? "#4fc3f7" : "#3b4b60";
    g.fillRect(x, y1, 1, Math.max(1, y2 - y1));
  }
  if (state.sel) {
    g.fillStyle = "rgba(79, 195, 247, 0.12)";
    g.fillRect(xa, 0, xb - xa, h);
    g.fillStyle = "#ffca28";
    g.fillRect(Math.round(xa) - 1, 0, 2, h);
    g.fillRect(Math.round(xb) - 1, 0, 2, h);
  }
  const cut = playingCutsS();
  if (cut.length && dur) {
    g.fillStyle = "rgba(255, 138, 128, 0.28)";
    for (const [ca, cb] of cut) g.fillRect((ca / dur) * w, 0, Math.max(1, ((cb - ca) / dur) * w), h);
  }
  const head = playheadS();
  if (head != null && dur) {
    g.fillStyle = "#ffffff";
    g.fillRect(Math.round((head / dur) * w) - 1, 0, 2, h);
  }
  updateSelLabels();
}

/** Source ranges (s) the preview in the player left out: silence cut at the ends, pauses. */
function playingCutsS() {
  const p = state.playing;
  const steps = p && p.voice && p.voice.steps;
  if (!steps || !$("#player").getAttribute("src")) return [];
  const out = [];
  const dur = durationS();
  if (steps.trimmedMs) {
    const [a, b] = steps.trimmedMs;
    const keptFrom = p.recipe && p.recipe.trim ? (p.recipe.trim.startMs || 0) / 1000 : 0;
    const keptTo = p.recipe && p.recipe.trim && p.recipe.trim.endMs != null ? p.recipe.trim.endMs / 1000 : dur;
    if (a / 1000 > keptFrom) out.push([keptFrom, a / 1000]);
    if (b / 1000 < keptTo) out.push([b / 1000, keptTo]);
  }
  for (const [a, b] of steps.cutsMs || []) out.push([a / 1000, b / 1000]);
  return out;
}

function updateSelLabels() {
  const dur = durationS();
  const [a, b] = state.sel || [0, dur];
  $("#sel-start").textContent = fmtTime(a);
  $("#sel-end").textContent = fmtTime(b);
  $("#sel-len").textContent = state.sel ? `keeping ${fmtTime(b - a)}` : "keeping everything";
}

function setupWaveDrag() {
  const canvas = $("#wave");
  let dragFrom = null;
  const timeAt = (e) => {
    const r = canvas.getBoundingClientRect();
    const f = Math.min(Math.max((e.clientX - r.left) / r.width, 0), 1);
    return { t: f * durationS(), x: e.clientX };
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.source) return;
    canvas.setPointerCapture(e.pointerId);
    dragFrom = timeAt(e);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!dragFrom) return;
    const to = timeAt(e);
    if (Math.abs(to.x - dragFrom.x) < 3) return;
    state.sel = [Math.min(dragFrom.t, to.t), Math.max(dragFrom.t, to.t)];
    drawWave();
  });
  const end = (e) => {
    if (!dragFrom) return;
    const to = timeAt(e);
    if (Math.abs(to.x - dragFrom.x) < 3) state.sel = null;
    else state.sel = [Math.min(dragFrom.t, to.t), Math.max(dragFrom.t, to.t)];
    dragFrom = null;
    selToInputs();
    drawWave();
    editChanged();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", () => {
    dragFrom = null;
  });
  window.addEventListener("resize", drawWave);
}

function selToInputs() {
  if (state.sel) {
    $("#trim-start").value = state.sel[0].toFixed(3);
    $("#trim-end").value = state.sel[1].toFixed(3);
  } else {
    $("#trim-start").value = "";
    $("#trim-end").value = "";
  }
}

function inputsToSel() {
  const a = parseFloat($("#trim-start").value);
  const b = parseFloat($("#trim-end").value);
  const dur = durationS();
  if (!Number.isFinite(a) && !Number.isFinite(b)) state.sel = null;
  else state.sel = [Number.isFinite(a) ? a : 0, Number.isFinite(b) ? b : dur];
  drawWave();
}

// ---- recipe ------------------------------------------------------------------------------

function num(id, scale = 1) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = Number(raw);
  if (!Number.isFinite(v)) return raw; // let the server name the bad field
  return scale === 1 ? v : Math.round(v * scale);
}

/** The recipe as the API wants it, with identity values left out. */
function buildRecipe() {
  const r = {};
  const start = num("#trim-start", 1000);
  const end = num("#trim-end", 1000);
  const durMs = state.source ? state.source.durationMs || 0 : 0;
  const trim = {};
  if (start !== undefined && start !== 0) trim.startMs = start;
  if (end !== undefined && !(typeof end === "number" && durMs && end >= durMs && (start || 0) < end)) {
    trim.endMs = end;
  }
  if (Object.keys(trim).length) r.trim = trim;
  const fadeIn = num("#fade-in", 1000);
  if (fadeIn) r.fadeInMs = fadeIn;
  const fadeOut = num("#fade-out", 1000);
  if (fadeOut) r.fadeOutMs = fadeOut;
  const gain = num("#gain");
  if (gain && !$("#normalize").value) r.gainDb = gain; // a loudness target sets the gain
  const speed = num("#speed");
  if (speed !== undefined && speed !== 1) r.speed = speed;
  if ($("#trim-silence").checked) r.trimSilence = true;
  if ($("#channels").value) r.channels = $("#channels").value;
  if ($("#sample-rate").value) r.sampleRate = Number($("#sample-rate").value);
  Object.assign(r, voiceRecipe());
  const norm = $("#normalize").value;
  if (norm === "custom") {
    const n = {};
    const t = num("#target-lufs");
    const p = num("#true-peak");
    if (t !== undefined) n.targetLufs = t;
    if (p !== undefined) n.truePeakDb = p;
    r.normalize = n;
  } else if (norm) {
    r.normalize = { preset: norm };
  }
  return r;
}

/** A number field of the voice section; its default when left empty (the step is on). */
function voiceNum(id, scale = 1) {
  const v = num(id, scale);
  if (v !== undefined) return v;
  const d = Number($(id).defaultValue);
  return scale === 1 ? d : Math.round(d * scale);
}

/** The "Clean up voice" fields that are switched on (trimSilence is set with the rest). */
function voiceRecipe() {
  const r = {};
  if ($("#highpass-on").checked) r.highpassHz = voiceNum("#highpass-hz");
  if ($("#dehum-on").checked) {
    const v = $("#dehum-hz").value;
    r.dehum = v === "auto" ? "auto" : Number(v);
  }
  if ($("#denoise-on").checked) {
    r.denoise = $("#denoise-mode").value === "amount" ? { amountDb: Number($("#denoise-amount").value) } : "auto";
  }
  if ($("#leveler-on").checked) r.leveler = { strength: Number($("#leveler-strength").value) };
  if ($("#deess-on").checked) r.deess = { amount: Number($("#deess-amount").value) };
  if ($("#pauses-on").checked) r.shortenPauses = { maxPauseMs: voiceNum("#max-pause", 1000) };
  return r;
}

const VOICE_TOGGLES = ["highpass-on", "dehum-on", "denoise-on", "leveler-on", "deess-on", "trim-silence", "pauses-on"];

/** What a slider shows: its value in the field's unit ("20 dB", "70 %"). */
function rangeWords(input) {
  const v = Number(input.value);
  return input.dataset.unit === "%" ? `${Math.round(v * 100)} %` : `${v} ${input.dataset.unit || ""}`.trim();
}

/** A step's settings are usable only while it is switched on; sliders show their value. */
function syncVoice() {
  for (const id of VOICE_TOGGLES) {
    const t = document.getElementById(id);
    for (const cid of (t.dataset.controls || "").split(/\s+/).filter(Boolean)) {
      document.getElementById(cid).disabled = !t.checked;
    }
    t.closest(".voice-step").classList.toggle("on", t.checked);
  }
  const amount = $("#denoise-amount");
  amount.disabled = !$("#denoise-on").checked || $("#denoise-mode").value !== "amount";
  amount.title = amount.disabled && $("#denoise-on").checked ? "Choose “set the amount” to use the slider." : "";
  for (const input of document.querySelectorAll("#voice input[type=range]")) {
    const words = rangeWords(input);
    input.setAttribute("aria-valuetext", words);
    const out = document.getElementById(`${input.id}-out`);
    if (out) out.textContent = words;
  }
}

/** A few words naming an edit, for the job list. */
function recipeSummary(r) {
  const parts = [];
  if (r.trim) {
    const a = (r.trim.startMs || 0) / 1000;
    const b = r.trim.endMs != null ? r.trim.endMs / 1000 : durationS();
    parts.push(`${a.toFixed(2)}–${Number(b).toFixed(2)} s`);
  }
  if (r.fadeInMs) parts.push(`fade in ${r.fadeInMs / 1000} s`);
  if (r.fadeOutMs) parts.push(`fade out ${r.fadeOutMs / 1000} s`);
  if (r.gainDb) parts.push(`${r.gainDb > 0 ? "+" : ""}${r.gainDb} dB`);
  if (r.normalize) {
    parts.push(r.normalize.preset ? r.normalize.preset : `to ${r.normalize.targetLufs ?? -16} LUFS`);
  }
  if (r.speed) parts.push(`×${r.speed}`);
  if (r.trimSilence) parts.push("silence cut");
  if (r.channels) parts.push(r.channels);
  if (r.sampleRate) parts.push(`${r.sampleRate} Hz`);
  if (r.highpassHz) parts.push(`high-pass ${r.highpassHz} Hz`);
  if (r.dehum) parts.push(r.dehum === "auto" ? "dehum" : `dehum ${r.dehum} Hz`);
  if (r.denoise) parts.push(r.denoise === "auto" ? "denoise" : `denoise ${r.denoise.amountDb} dB`);
  if (r.leveler) parts.push(`leveler ${Math.round(r.leveler.strength * 100)} %`);
  if (r.deess) parts.push(`de-ess ${Math.round(r.deess.amount * 100)} %`);
  if (r.shortenPauses) parts.push(`pauses ≤ ${r.shortenPauses.maxPauseMs / 1000} s`);
  return parts.join(", ") || "no changes";
}

function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return value;
}

function resetRecipe() {
  const f = $("#recipe-form");
  f.reset();
  state.sel = null;
  selToInputs();
  syncNormalize();
  syncVoice();
  clearFieldErrors();
  drawWave();
}

function syncNormalize() {
  const on = $("#normalize").value === "custom";
  for (const el of document.querySelectorAll(".norm input")) el.disabled = !on;
  for (const el of document.querySelectorAll(".field.norm")) el.hidden = !on;
  const gain = $("#gain");
  gain.disabled = !!$("#normalize").value;
  gain.title = gain.disabled ? "The loudness target sets the gain." : "";
}

function clearFieldErrors() {
  for (const el of document.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  for (const el of document.querySelectorAll(".field-error")) el.textContent = "";
  setError("#recipe-error", "");
}

/** Turn msgspec's "Expected `float` <= 30.0 - at `$.gainDb`" into words for the field's unit. */
function fieldMessage(detail, input) {
  const text = String(detail || "").replace(/\s*-\s*at `\$[^`]*`\s*$/, "");
  const scale = input && input.dataset.scale ? Number(input.dataset.scale) : 1;
  const m = text.match(/^Expected `\w+` (>=|<=|>|<) (-?[\d.]+)$/);
  if (m) {
    const v = Number(m[2]) / scale;
    const words = { ">=": "at least", "<=": "at most", ">": "more than", "<": "less than" }[m[1]];
    return `must be ${words} ${v}`;
  }
  if (/^Expected `\w+`, got `str`$/.test(text)) return "must be a number";
  if (/^Expected `int( \| null)?`, got `float`$/.test(text)) return "must be a whole number";
  return text;
}

function showProblem(err, where) {
  if (err.field) {
    // The recipe is nested in the request body: `recipe.gainDb` is the form's `gainDb`.
    const field = err.field.replace(/^\$\.?/, "").replace(/^recipe\./, "");
    let input = document.querySelector(`[data-field="${field}"]`);
    if (!input && field.includes(".")) input = document.querySelector(`[data-field="${field.split(".")[0]}"]`);
    if (!input && field === "trim") input = $("#trim-start");
    if (input) {
      const box = input.closest(".field");
      box.classList.add("invalid");
      const words = fieldMessage(err.message, input);
      box.querySelector(".field-error").textContent = words;
      const label = box.querySelector("label").textContent.trim();
      setError(where, `Please fix “${label}”: ${words}.`);
      input.focus();
      return;
    }
  }
  const text = String(err.message || "").replace(/\s*-\s*at `\$\.?([^`]*)`\s*$/, " ($1)");
  setError(where, text);
}

// ---- preview -----------------------------------------------------------------------------

function previewFormat() {
  const a = $("#player");
  return a.canPlayType('audio/ogg; codecs="opus"') ? "opus" : "aac";
}

/** The preview request the form describes now (the page's preview-cache key). */
function currentPreviewKey() {
  if (!state.source) return "";
  const body = { sourceKey: state.source.sourceKey, recipe: buildRecipe(), format: previewFormat() };
  return JSON.stringify(canonical(body));
}

function resetPlayer(note = "") {
  const a = $("#player");
  a.pause();
  a.removeAttribute("src");
  a.load();
  state.playing = null;
  $("#preview-note").textContent = note;
  show($("#preview-progress"), false);
  show($("#preview-report"), false);
  show($("#preview-voice"), false);
  drawWave();
}

function previewAudioUrl(view) {
  // The preview route streams local storage with Range; with an API key (no headers on
  // <audio>) or object storage, the signed downloadUrl is the one the element can fetch.
  if (view.downloadUrl && apiKey()) return view.downloadUrl;
  return `/api/audio/edit/preview/${view.jobId}/audio`;
}

function play(entry, key, note) {
  const a = $("#player");
  state.playing = { key, ...entry };
  $("#preview-note").textContent = note;
  if (a.getAttribute("src") !== entry.url) {
    a.src = entry.url;
    a.load();
  } else {
    a.currentTime = 0;
  }
  renderReport($("#preview-report"), entry.report, "Preview loudness");
  renderVoiceReport($("#preview-voice"), entry.voice, entry.recipe, "Voice clean-up of the preview");
  drawWave();
  a.play().catch(() => {
    /* autoplay may be blocked: the controls are there */
  });
}

/**
 * The form changed. A preview in the player that is not of this edit must not pass for it:
 * it goes, and the note says so. Only when marking in/out with the keys does the earlier
 * preview stay (the listener is choosing the points on it), and the note says that instead.
 */
function editChanged(how = "form") {
  saveEdit();
  if (!state.playing || state.playing.key === currentPreviewKey()) return;
  if (how === "keys") {
    $("#preview-note").textContent = "Playing the earlier edit: press Preview (P) to hear the new one.";
    show($("#preview-report"), false);
    show($("#preview-voice"), false);
    return;
  }
  resetPlayer("The edit changed: press Preview to hear it.");
}

/** Where the player is, in source time (trim start + played time × speed), or null. */
function playheadS() {
  const p = state.playing;
  const a = $("#player");
  if (!p || !a.getAttribute("src")) return null;
  const r = p.recipe || {};
  const steps = p.voice && p.voice.steps;
  let start = r.trim && r.trim.startMs ? r.trim.startMs / 1000 : 0;
  if (steps && steps.trimmedMs) start = steps.trimmedMs[0] / 1000; // cut silence moved the start
  let t = start + ((p.offsetS || 0) + (a.currentTime || 0)) * (r.speed || 1);
  // Shortened pauses: each cut before this point (source ms, ascending) moves it on.
  for (const [ca, cb] of (steps && steps.cutsMs) || []) if (ca / 1000 < t) t += (cb - ca) / 1000;
  return Math.min(Math.max(t, 0), durationS());
}

// Long sources: the edit is heard at once. Its first seconds render as their own small
// preview and play; while one part plays the next (twice as long) renders; the whole preview
// renders beside them, and when it is ready the player switches to it at the same position.
// Recipes whose start depends on a pass over the whole source (cut silence, shortened pauses,
// leveler) render whole first.
const QUICK_START_MIN_S = 45;
const QUICK_START_HEAD_S = 8;

function quickBounds(recipe) {
  if (durationS() < QUICK_START_MIN_S) return null;
  if (recipe.trimSilence || recipe.shortenPauses || recipe.leveler) return null;
  const start = recipe.trim && recipe.trim.startMs ? recipe.trim.startMs : 0;
  const end = recipe.trim && recipe.trim.endMs ? recipe.trim.endMs : Math.floor(durationS() * 1000);
  if (end - start < 2 * QUICK_START_HEAD_S * 1000) return null;
  return { start, end };
}

/** The recipe of one part of the edit: source [fromMs, toMs), no fade-out (it ends the edit). */
function partRecipe(recipe, bounds, fromMs, toMs) {
  const part = { ...recipe, trim: { startMs: Math.round(fromMs), endMs: Math.round(toMs) } };
  if (fromMs > bounds.start) delete part.fadeInMs;
  if (toMs < bounds.end) delete part.fadeOutMs;
  return part;
}

async function renderPreview(recipe, format, label, onProgress) {
  const accepted = await api("POST", "/api/audio/edit/preview", {
    sourceKey: state.source.sourceKey,
    recipe,
    format,
  });
  recordJob(accepted.jobId, "preview", label);
  return followJob(accepted.jobId, (v) => {
    recordJob(accepted.jobId, "preview", label, v);
    if (onProgress) onProgress(v);
  });
}

/** Parts of the edit played one after the other until the whole preview takes over. */
function startQuickParts(recipe, format, key, bounds) {
  const speed = recipe.speed || 1;
  const run = { stopped: false, next: null };
  const part = (fromMs, lenS) => {
    const toMs = Math.min(bounds.end, fromMs + lenS * 1000 * speed);
    const promise = renderPreview(
      partRecipe(recipe, bounds, fromMs, toMs),
      format,
      `preview part: ${recipeSummary(recipe)}`,
    ).then((v) => (v.status === "completed" ? { view: v, fromMs, toMs, lenS } : null));
    return promise.catch(() => null);
  };
  const playPart = (p) => {
    if (run.stopped || !p || key !== currentPreviewKey()) return;
    if (state.playing && !state.playing.part) return; // the whole preview is already there
    const entry = {
      url: previewAudioUrl(p.view),
      jobId: p.view.jobId,
      recipe,
      part: true,
      offsetS: (p.fromMs - bounds.start) / 1000 / speed,
    };
    play(entry, key, "Playing the start while the rest renders…");
    if (p.toMs < bounds.end) run.next = part(p.toMs, p.lenS * 2);
  };
  $("#player").addEventListener("ended", function onEnded() {
    if (run.stopped || !state.playing || !state.playing.part) {
      this.removeEventListener("ended", onEnded);
      return;
    }
    if (run.next) run.next.then(playPart);
  });
  part(bounds.start, QUICK_START_HEAD_S).then(playPart);
  return run;
}

async function preview() {
  if (!state.source) return;
  clearFieldErrors();
  const recipe = buildRecipe();
  const format = previewFormat();
  const key = currentPreviewKey();
  const hit = state.previewCache.get(key);
  if (hit) {
    play(hit, key, "Playing the earlier preview of this edit (cached).");
    return;
  }
  const btn = $("#preview-btn");
  btn.disabled = true;
  const bar = $("#preview-progress");
  const bounds = quickBounds(recipe);
  let quick = null;
  try {
    const label = `preview: ${recipeSummary(recipe)}`;
    const whole = renderPreview(recipe, format, label, (v) => {
      if (TERMINAL.has(v.status)) return;
      show(bar);
      bar.value = v.progress || 0;
      if (!(state.playing && state.playing.part)) {
        $("#preview-note").textContent = `${stageWords(v)}… ${v.progress || 0}%`;
      }
    });
    if (bounds) quick = startQuickParts(recipe, format, key, bounds);
    let view;
    try {
      view = await whole;
    } catch (err) {
      if (quick) quick.stopped = true;
      resetPlayer("Not previewed: the server refused this edit (see above).");
      showProblem(err, "#recipe-error");
      return;
    }
    if (quick) quick.stopped = true;
    show(bar, false);
    if (view.status !== "completed") {
      resetPlayer("Not previewed.");
      setError("#recipe-error", `Preview failed: ${errorWords(view.error)}`);
      return;
    }
    const entry = {
      url: previewAudioUrl(view),
      jobId: view.jobId,
      recipe,
      report: view.result && view.result.loudnessReport,
      voice: view.result && view.result.voiceReport,
    };
    state.previewCache.set(key, entry);
    if (key !== currentPreviewKey()) {
      // The form changed while this rendered: it is cached for later, not played as current.
      $("#preview-note").textContent = "The edit changed while rendering: press Preview to hear it.";
      return;
    }
    if (state.playing && state.playing.part && state.playing.key === key) {
      switchToWhole(entry, key);
      return;
    }
    const cached = view.result && view.result.fromCache;
    play(entry, key, cached ? "Playing (this edit was already rendered)." : "Playing the preview.");
  } finally {
    btn.disabled = false;
  }
}

/** The whole preview is ready while its start plays: carry on from the same position. */
function switchToWhole(entry, key) {
  const a = $("#player");
  const at = ((state.playing && state.playing.offsetS) || 0) + (a.currentTime || 0);
  const wasPlaying = !a.paused && !a.ended;
  state.playing = { key, ...entry };
  a.src = entry.url;
  a.load();
  const resume = () => {
    a.removeEventListener("loadedmetadata", resume);
    try {
      a.currentTime = at;
    } catch {
      /* not seekable yet: from the start */
    }
    if (wasPlaying || at > 0) a.play().catch(() => {});
  };
  a.addEventListener("loadedmetadata", resume);
  $("#preview-note").textContent = "Playing the preview.";
  renderReport($("#preview-report"), entry.report, "Preview loudness");
  renderVoiceReport($("#preview-voice"), entry.voice, entry.recipe, "Voice clean-up of the preview");
  drawWave();
}

function togglePlay() {
  const a = $("#player");
  if (!a.getAttribute("src")) {
    preview();
    return;
  }
  if (a.paused) {
    a.play().catch(() => {});
  } else {
    a.pause();
  }
}

/** I / O: keep from / until the playhead (source time). */
function markAtPlayhead(which) {
  const t = playheadS();
  if (t == null) {
    $("#preview-note").textContent = "Play a preview, then press I or O at the moment to keep from or until.";
    return;
  }
  const startEl = $("#trim-start");
  const endEl = $("#trim-end");
  if (which === "in") {
    startEl.value = t.toFixed(3);
    const end = parseFloat(endEl.value);
    if (Number.isFinite(end) && end <= t) endEl.value = "";
  } else {
    endEl.value = t.toFixed(3);
    const start = parseFloat(startEl.value);
    if (Number.isFinite(start) && start >= t) startEl.value = "";
  }
  clearFieldErrors();
  inputsToSel();
  editChanged("keys");
}

function setupShortcuts() {
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    // Typing, pressing a focused button or using the player's own controls come first.
    if (t instanceof Element && t.closest("input, select, textarea, button, audio, summary, [contenteditable], .drop")) return;
    if (!state.source || $("#edit").hidden) return;
    const k = e.key.toLowerCase();
    if (e.key === " ") {
      e.preventDefault();
      togglePlay();
    } else if (k === "i") {
      markAtPlayhead("in");
    } else if (k === "o") {
      markAtPlayhead("out");
    } else if (k === "p") {
      preview();
    }
  });
  const a = $("#player");
  for (const ev of ["timeupdate", "seeked", "play", "pause", "ended"]) a.addEventListener(ev, drawWave);
}

// ---- loudness report ---------------------------------------------------------------------

const PRESET_WORDS = {
  "apple-podcasts": "Apple Podcasts",
  spotify: "Spotify",
  youtube: "YouTube",
  "amazon-music": "Amazon Music",
  "ebu-r128": "EBU R128",
  "atsc-a85": "ATSC A/85",
  "audiobook-acx": "ACX audiobook",
};

function fmtSigned(v, unit) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–";
  return `${v > 0 ? "+" : v < 0 ? "−" : ""}${Math.abs(v).toFixed(1)} ${unit}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

/** Before → after levels of a render, what was applied, warnings and the ACX checks. */
function renderReport(box, report, title) {
  box.textContent = "";
  if (!report || !report.after) {
    show(box, false);
    return;
  }
  const before = report.before || {};
  const after = report.after || {};
  box.append(el("h3", null, title));
  const table = el("table", "report-table");
  const head = el("tr");
  for (const h of ["", "Before", "After"]) head.append(el("th", null, h));
  table.append(head);
  const rows = [
    ["Integrated", "integratedLufs", "LUFS", "lufs"],
    ["True peak", "truePeakDb", "dBTP", "peak"],
    ["Loudness range", "lra", "LU", "lra"],
    ["Short-term max", "shortTermMaxLufs", "LUFS", "stmax"],
  ];
  if (report.acx) rows.push(["RMS", "rmsDb", "dBFS", "rms"], ["Noise floor", "noiseFloorDb", "dBFS", "floor"]);
  for (const [label, field, unit, name] of rows) {
    const tr = el("tr");
    tr.dataset.row = name;
    tr.append(el("th", null, label), el("td", "before", fmtDb(before[field], unit)));
    tr.append(el("td", "after", fmtDb(after[field], unit)));
    table.append(tr);
  }
  box.append(table);
  const facts = [];
  const target = report.target;
  if (target) {
    const name = target.preset ? `${PRESET_WORDS[target.preset] || target.preset}: ` : "";
    const level =
      target.integratedLufs != null ? `${fmtDb(target.integratedLufs, "LUFS")}` : `${fmtDb(target.rmsDb, "dB RMS")}`;
    facts.push(`Target ${name}${level}, peaks ≤ ${fmtDb(target.truePeakDb, "dBTP")}`);
  }
  facts.push(`gain ${fmtSigned(report.gainDb, "dB")}`);
  if (report.limiterMaxReductionDb) facts.push(`limiter up to ${fmtDb(report.limiterMaxReductionDb, "dB")}`);
  if (report.measuringPasses) facts.push(`${report.measuringPasses} measuring pass${report.measuringPasses === 1 ? "" : "es"}`);
  if (report.encodePasses > 1) facts.push(`${report.encodePasses} encode passes`);
  box.append(el("p", "report-facts", facts.join(" · ")));
  const acx = report.acx;
  if (acx) {
    const mark = (ok) => (ok ? "✓" : "✗");
    const p = el("p", `report-acx ${acx.passed ? "pass" : "fail"}`);
    p.textContent =
      `ACX ${acx.passed ? "passed" : "not passed"}: ` +
      `RMS ${fmtDb(acx.rmsDb, "dB")} ${mark(acx.rmsPass)} (−23…−18) · ` +
      `peak ${fmtDb(acx.peakDb, "dB")} ${mark(acx.peakPass)} (≤ −3) · ` +
      `noise floor ${fmtDb(acx.noiseFloorDb, "dB")} ${mark(acx.noiseFloorPass)} (≤ −60)`;
    box.append(p);
  }
  const warnings = report.warnings || [];
  if (warnings.length) {
    const ul = el("ul", "report-warnings");
    for (const w of warnings) {
      const li = el("li", null, w.message);
      li.dataset.code = w.code;
      li.title = w.code;
      ul.append(li);
    }
    box.append(ul);
  }
  show(box);
}

// ---- voice analysis and clean-up report --------------------------------------------------

function fmtHz(v) {
  return `${Number.isInteger(v) ? v : Number(v).toFixed(1)} Hz`;
}

function humWords(hum) {
  return hum ? `${fmtHz(hum.frequencyHz)}, ${fmtDb(hum.levelDb, "dBFS")}` : "none";
}

/** One analysis ({noiseFloorDb, speechLevelDb, snrDb, hum, clippedSamples, speechRatio}) in words. */
const ANALYSIS_ROWS = [
  ["Noise floor", "floor", (a) => (a.noiseFloorDb != null ? fmtDb(a.noiseFloorDb, "dBFS") : "digital silence")],
  ["Speech level", "speech", (a) => (a.speechLevelDb != null ? fmtDb(a.speechLevelDb, "dBFS") : "no speech found")],
  ["Signal to noise", "snr", (a) => fmtDb(a.snrDb, "dB")],
  ["Mains hum", "hum", (a) => humWords(a.hum)],
  ["Clipped samples", "clipped", (a) => (a.clippedSamples || 0).toLocaleString("en")],
  ["Speech", "ratio", (a) => `${Math.round((a.speechRatio || 0) * 100)} % of the time`],
];

/** The ingest's analysis, with the source facts; a hint names the steps that would help. */
function renderAnalysis(a) {
  const box = $("#src-analysis");
  show(box, !!a);
  if (!a) return;
  const ids = { floor: "an-floor", speech: "an-speech", snr: "an-snr", hum: "an-hum", clipped: "an-clipped", ratio: "an-ratio" };
  for (const [, name, words] of ANALYSIS_ROWS) document.getElementById(ids[name]).textContent = words(a);
  const hints = [];
  if (a.hum) hints.push(`Hum at ${fmtHz(a.hum.frequencyHz)}: “Remove mains hum” notches it.`);
  if (a.snrDb != null && a.snrDb < 30 && a.noiseFloorDb != null) hints.push("Audible noise: try “Reduce noise”.");
  if (a.clippedSamples) hints.push("Clipped samples are distortion that no setting here undoes.");
  $("#an-hint").textContent = hints.join(" ");
  show($("#an-hint"), hints.length > 0);
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** What each step of the voice chain did, in a few words each (data-step names the step). */
function voiceStepWords(steps, recipe) {
  const r = recipe || {};
  const out = [];
  const add = (step, text, title) => out.push({ step, text, title });
  if (steps.highpassHz != null) add("highpass", `rumble below ${steps.highpassHz} Hz filtered out`);
  const notched = steps.notchedHz || [];
  if (notched.length) {
    add(
      "dehum",
      `hum ${fmtHz(steps.dehumHz ?? notched[0])} notched (${notched.length} harmonics)`,
      `notches at ${notched.map((f) => fmtHz(f)).join(", ")}`,
    );
  } else if (r.dehum != null) {
    add("dehum", "no hum found: nothing notched");
  }
  if (steps.denoiseDb != null) add("denoise", `noise −${Number(steps.denoiseDb).toFixed(1)} dB`);
  else if (r.denoise != null) add("denoise", "noise: nothing to remove");
  if (steps.levelerMaxGainDb != null) {
    add(
      "leveler",
      `levels evened out (${fmtSigned(steps.levelerMinGainDb, "dB")} … ${fmtSigned(steps.levelerMaxGainDb, "dB")})`,
    );
  }
  if (steps.deess != null) add("deess", `de-esser at ${Math.round(steps.deess * 100)} %`);
  if (steps.trimmedMs) {
    const [a, b] = steps.trimmedMs;
    add("trim", `silence cut: keeps ${fmtTime(a / 1000)}–${fmtTime(b / 1000)} of the source`);
  } else if (r.trimSilence) {
    add("trim", "silence at the ends: nothing to cut");
  }
  const cuts = steps.cutsMs || [];
  if (cuts.length) {
    const n = cuts.length;
    const list = cuts.map(([a, b]) => `${fmtTime(a / 1000)}–${fmtTime(b / 1000)}`).join(", ");
    add("pauses", `${n} pause${n === 1 ? "" : "s"} shortened, ${seconds(steps.cutTotalMs || 0)} cut`, `cut (source time): ${list}`);
  } else if (r.shortenPauses) {
    add("pauses", `no pause longer than ${seconds(r.shortenPauses.maxPauseMs)}: nothing cut`);
  }
  return out;
}

/** result.voiceReport: before → after analysis and what each step did (null: no voice step). */
function renderVoiceReport(box, report, recipe, title) {
  box.textContent = "";
  if (!report) {
    show(box, false);
    return;
  }
  box.append(el("h3", null, title));
  if (report.before || report.after) {
    const table = el("table", "report-table");
    const head = el("tr");
    for (const h of ["", "Before", "After"]) head.append(el("th", null, h));
    table.append(head);
    for (const [label, name, words] of ANALYSIS_ROWS) {
      const tr = el("tr");
      tr.dataset.row = name;
      tr.append(el("th", null, label));
      tr.append(el("td", "before", report.before ? words(report.before) : "–"));
      tr.append(el("td", "after", report.after ? words(report.after) : "–"));
      table.append(tr);
    }
    box.append(table);
  }
  const steps = voiceStepWords(report.steps || {}, recipe);
  if (steps.length) {
    const ul = el("ul", "voice-steps-done");
    for (const s of steps) {
      const li = el("li", null, s.text);
      li.dataset.step = s.step;
      if (s.title) li.title = s.title;
      ul.append(li);
    }
    box.append(ul);
  }
  const cuts = report.steps && report.steps.cutsMs;
  if (cuts && cuts.length) {
    const details = el("details", "voice-cuts");
    details.append(el("summary", null, "Cut list (source time)"));
    const ol = el("ol");
    for (const [a, b] of cuts) ol.append(el("li", null, `${fmtTime(a / 1000)} – ${fmtTime(b / 1000)} (${seconds(b - a)})`));
    details.append(ol);
    box.append(details);
    if (box.id === "preview-voice") {
      box.append(el("p", "report-facts", "While this preview is in the player, what it cut is shaded red on the waveform."));
    }
  }
  show(box);
}

// ---- save --------------------------------------------------------------------------------

const LOSSY_DEFAULT_KBPS = { mp3: 192, opus: 128, aac: 192 };
const BITRATES = [64, 96, 128, 160, 192, 256, 320];

/** The quality choices of the chosen format: bit depth (lossless) or bitrate (lossy). */
function syncSaveOptions() {
  const format = $("#save-format").value;
  const sel = $("#save-quality");
  const was = sel.value;
  sel.textContent = "";
  const add = (value, text) => {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    sel.append(o);
  };
  if (format === "wav" || format === "flac") {
    $("#save-quality-label").textContent = "Bit depth";
    add("", "16-bit");
    add("24", "24-bit");
  } else {
    $("#save-quality-label").textContent = "Bitrate";
    const def = LOSSY_DEFAULT_KBPS[format];
    add("", `${def} kbps (default)`);
    for (const b of BITRATES) if (b !== def) add(String(b), `${b} kbps`);
  }
  sel.value = [...sel.options].some((o) => o.value === was) ? was : "";
  show($("#mp3-quality-box"), format === "mp3");
}

function saveOptions(format) {
  const q = $("#save-quality").value;
  const o = {};
  if (format === "wav" || format === "flac") {
    if (q === "24") o.bitDepth = 24;
  } else if (q) {
    o.bitrate = Number(q);
  }
  if (format === "mp3" && $("#mp3-quality").value !== "") o.quality = Number($("#mp3-quality").value);
  return Object.keys(o).length ? o : undefined;
}

/** The name the server gives the file: the last part of its storage key. */
function savedName(view, fallback) {
  const key = view.result && view.result.preparedKey;
  return key ? key.split("/").pop() : fallback;
}

async function save() {
  if (!state.source) return;
  clearFieldErrors();
  setError("#save-error", "");
  show($("#save-done"), false);
  show($("#save-report"), false);
  show($("#save-voice"), false);
  const format = $("#save-format").value;
  const body = { sourceKey: state.source.sourceKey, recipe: buildRecipe(), format };
  const name = $("#save-name").value.trim();
  if (name) body.filename = name;
  const options = saveOptions(format);
  if (options) body.options = options;
  const btn = $("#save-btn");
  btn.disabled = true;
  let accepted;
  try {
    accepted = await api("POST", "/api/audio/edit/save", body);
  } catch (err) {
    btn.disabled = false;
    const field = (err.field || "").replace(/^\$\.?/, "");
    const inSave = !field || field === "format" || field === "filename" || field.startsWith("options");
    showProblem(err, inSave ? "#save-error" : "#recipe-error");
    if (!inSave) setError("#save-error", "The edit settings need fixing (see above).");
    return;
  }
  const jobId = accepted.jobId;
  state.saveJobId = jobId;
  const label = `${name || $("#save-name").placeholder}.${format === "aac" ? "m4a" : format}`;
  recordJob(jobId, "save", label);
  show($("#cancel-btn"));
  $("#cancel-btn").disabled = false;
  setStatus("save", `Saving ${label}`, 0);
  const view = await followJob(jobId, (v) => {
    recordJob(jobId, "save", label, v);
    if (!TERMINAL.has(v.status)) {
      setStatus("save", `${v.cancelRequested ? "Cancelling" : stageWords(v)}: ${label}`, v.progress || 0);
    }
  });
  btn.disabled = false;
  show($("#cancel-btn"), false);
  state.saveJobId = null;
  if (view.status === "completed") {
    // The server makes the name storage-safe ("Episode 42" -> "Episode_42"): show that one.
    const real = savedName(view, label);
    recordJob(jobId, "save", real, view);
    setStatus("save", `Saved ${real}`, 100);
    const link = $("#download-link");
    link.href = view.downloadUrl || "#";
    link.textContent = `download ${real}`;
    link.setAttribute("download", real);
    $("#save-size").textContent = view.result && view.result.sizeBytes ? `(${fmtBytes(view.result.sizeBytes)})` : "";
    show($("#save-done"));
    renderReport($("#save-report"), view.result && view.result.loudnessReport, `Loudness of ${real}`);
    renderVoiceReport($("#save-voice"), view.result && view.result.voiceReport, body.recipe, `Voice clean-up of ${real}`);
    if (!view.downloadUrl) setError("#save-error", "Saved, but the server gave no download link.");
  } else {
    show($("#save-status"), false);
    const cancelled = view.status === "cancelled";
    setError("#save-error", cancelled ? "Save cancelled." : `Save failed: ${errorWords(view.error)}`);
    $("#save-error").classList.toggle("neutral", cancelled);
  }
}

// ---- the edit survives a reload (per source, this tab) -----------------------------------

const EDIT_FIELDS = [
  "trim-start", "trim-end", "fade-in", "fade-out", "gain", "speed", "channels", "sample-rate",
  "trim-silence", "normalize", "target-lufs", "true-peak", "save-format", "save-quality",
  "mp3-quality", "save-name",
  "highpass-on", "highpass-hz", "dehum-on", "dehum-hz", "denoise-on", "denoise-mode", "denoise-amount",
  "leveler-on", "leveler-strength", "deess-on", "deess-amount", "pauses-on", "max-pause",
];

function saveEdit() {
  if (!state.source) return;
  const values = {};
  for (const id of EDIT_FIELDS) {
    const e = document.getElementById(id);
    values[id] = e.type === "checkbox" ? e.checked : e.value;
  }
  sessionStorage.setItem(STORE_EDIT + state.source.jobId, JSON.stringify(values));
}

function restoreEdit() {
  let values = null;
  try {
    values = JSON.parse(sessionStorage.getItem(STORE_EDIT + state.source.jobId) || "null");
  } catch {
    values = null;
  }
  if (values) {
    for (const id of EDIT_FIELDS) {
      if (!(id in values)) continue;
      const e = document.getElementById(id);
      if (e.type === "checkbox") e.checked = !!values[id];
      else e.value = values[id];
    }
  }
  syncSaveOptions(); // the quality choices depend on the format: set the saved one again
  if (values && "save-quality" in values) $("#save-quality").value = values["save-quality"];
  syncNormalize();
  syncVoice();
  inputsToSel();
}

async function cancelSave() {
  const jobId = state.saveJobId;
  if (!jobId) return;
  $("#cancel-btn").disabled = true;
  $("#save-label").textContent = "Cancelling…";
  try {
    await api("POST", `/api/audio/jobs/${jobId}/cancel`);
  } catch (err) {
    setError("#save-error", `Could not cancel: ${err.message}`);
    $("#cancel-btn").disabled = false;
  }
}

// ---- saved presets (docs/publishing.md) ---------------------------------------------------

const presets = { list: [] };

/** The tenant's presets into the picker; `pick` stays (or becomes) the chosen one. */
async function loadPresets(pick) {
  let doc;
  try {
    doc = await api("GET", "/api/presets");
  } catch (err) {
    $("#preset-note").textContent = `Presets unavailable: ${err.message}`;
    return;
  }
  presets.list = (doc && doc.presets) || [];
  const sel = $("#preset-pick");
  const keep = pick !== undefined ? pick : sel.value;
  while (sel.options.length > 1) sel.remove(1);
  for (const p of presets.list) {
    const o = document.createElement("option");
    o.value = p.name;
    const formats = (p.outputs || []).map((x) => x.format).join(" + ") || p.format || "";
    o.textContent = `${p.name} (v${p.version}${formats ? `, ${formats}` : ""})`;
    sel.append(o);
  }
  sel.value = presets.list.some((p) => p.name === keep) ? keep : "";
}

/** What the page saves as a preset: the edit without its trim, the format and its quality. */
function presetBody(name) {
  const recipe = buildRecipe();
  delete recipe.trim; // positions in this source, not a setting for the next episode
  const format = $("#save-format").value;
  const body = { recipe, format };
  const options = saveOptions(format);
  if (options) body.options = options;
  const old = presets.list.find((p) => p.name === name);
  if (old && old.metadata) body.metadata = old.metadata; // the page does not edit tags: keep them
  return body;
}

async function savePreset() {
  clearFieldErrors();
  const box = $("#preset-name").closest(".field");
  box.classList.remove("invalid");
  box.querySelector(".field-error").textContent = "";
  const name = $("#preset-name").value.trim();
  const note = $("#preset-note");
  if (!name) {
    box.classList.add("invalid");
    box.querySelector(".field-error").textContent = "give the preset a name";
    $("#preset-name").focus();
    return;
  }
  let saved;
  try {
    saved = await api("PUT", `/api/presets/${encodeURIComponent(name)}`, presetBody(name));
  } catch (err) {
    if (err.field === "name" || err.status === 404) {
      box.classList.add("invalid");
      box.querySelector(".field-error").textContent =
        "letters, digits, - and _ only (at most 64)";
      note.textContent = "Not saved.";
    } else {
      showProblem(err, "#recipe-error");
      note.textContent = "Not saved: the edit settings need fixing.";
    }
    return;
  }
  note.textContent = `Saved preset “${saved.name}” (version ${saved.version}).`;
  await loadPresets(saved.name);
}

function setValue(id, value) {
  const e = document.getElementById(id);
  if (e.tagName === "SELECT" && value !== "" && ![...e.options].some((o) => o.value === value)) {
    const o = document.createElement("option");
    o.value = o.textContent = value; // a rate the list does not offer
    e.append(o);
  }
  e.value = value;
}

/** The recipe's fields into the form (the inverse of buildRecipe); the trim stays. */
function fillRecipe(r) {
  const ms = (v, d) => String(v != null ? v / 1000 : d);
  setValue("fade-in", ms(r.fadeInMs, 0));
  setValue("fade-out", ms(r.fadeOutMs, 0));
  setValue("gain", String(r.gainDb ?? 0));
  setValue("speed", String(r.speed ?? 1));
  setValue("channels", r.channels || "");
  setValue("sample-rate", r.sampleRate ? String(r.sampleRate) : "");
  $("#trim-silence").checked = !!r.trimSilence;
  const n = r.normalize;
  if (!n) setValue("normalize", "");
  else if (n.preset) setValue("normalize", n.preset);
  else {
    setValue("normalize", "custom");
    setValue("target-lufs", String(n.targetLufs ?? -16));
    setValue("true-peak", String(n.truePeakDb ?? -1.5));
  }
  const on = (id, value) => {
    document.getElementById(id).checked = value != null;
  };
  on("highpass-on", r.highpassHz);
  setValue("highpass-hz", String(r.highpassHz ?? 80));
  on("dehum-on", r.dehum);
  setValue("dehum-hz", r.dehum != null ? String(r.dehum) : "auto");
  on("denoise-on", r.denoise);
  const amount = r.denoise && r.denoise !== "auto" ? (r.denoise.amountDb ?? 20) : 20;
  setValue("denoise-mode", r.denoise && r.denoise !== "auto" ? "amount" : "auto");
  setValue("denoise-amount", String(amount));
  on("leveler-on", r.leveler);
  setValue("leveler-strength", String((r.leveler && r.leveler.strength) ?? 0.7));
  on("deess-on", r.deess);
  setValue("deess-amount", String((r.deess && r.deess.amount) ?? 0.5));
  on("pauses-on", r.shortenPauses);
  setValue("max-pause", ms(r.shortenPauses && r.shortenPauses.maxPauseMs, 1));
}

function applyPreset() {
  const name = $("#preset-pick").value;
  const p = presets.list.find((x) => x.name === name);
  if (!p) return;
  clearFieldErrors();
  fillRecipe(p.recipe || {});
  const outputs = p.outputs || [];
  const format = p.format || (outputs[0] && outputs[0].format);
  const options = p.options || (outputs[0] && outputs[0].options) || {};
  if (format) {
    setValue("save-format", format);
    syncSaveOptions();
    const q = options.bitDepth === 24 ? "24" : options.bitrate ? String(options.bitrate) : "";
    if ([...$("#save-quality").options].some((o) => o.value === q)) $("#save-quality").value = q;
    setValue("mp3-quality", options.quality != null ? String(options.quality) : "");
  }
  $("#preset-name").value = p.name;
  syncNormalize();
  syncVoice();
  editChanged();
  const notes = [`Filled in from “${p.name}” (version ${p.version}).`];
  if (outputs.length > 1) notes.push(`Its ${outputs.length} outputs are saved only through the API; the page saves one file.`);
  const r = p.recipe || {};
  if (r.intro || r.outro) notes.push("Its intro/outro are not shown here.");
  $("#preset-note").textContent = notes.join(" ");
}

function setupPresets() {
  $("#preset-save").addEventListener("click", savePreset);
  $("#preset-pick").addEventListener("change", applyPreset);
  $("#preset-pick").addEventListener("focus", () => loadPresets());
  $("#preset-name").addEventListener("input", () => {
    const box = $("#preset-name").closest(".field");
    box.classList.remove("invalid");
    box.querySelector(".field-error").textContent = "";
  });
}

// ---- webhooks settings panel (docs/webhooks.md) ------------------------------------------

const wh = {
  endpoints: [],
  open: null, // the endpoint whose deliveries are shown
  timer: null,
  loaded: false,
  shown: "", // what the deliveries table shows now
};

function fmtWhen(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function fmtNext(iso) {
  if (!iso) return "–";
  const s = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  if (!Number.isFinite(s)) return iso;
  if (s <= 0) return "due now";
  if (s < 90) return `in ${s} s`;
  if (s < 5400) return `in ${Math.round(s / 60)} min`;
  return fmtWhen(iso);
}

function whClearErrors() {
  for (const box of document.querySelectorAll("#wh-form .field.invalid")) box.classList.remove("invalid");
  for (const e of document.querySelectorAll("#wh-form .field-error")) e.textContent = "";
  setError("#wh-error", "");
}

/** A refused request: next to its field (`url`, `events[0]` → events, …) or under the form. */
function whProblem(err, what) {
  const field = String(err.field || "").replace(/^\$\.?/, "").split(/[.[]/)[0];
  const box = field ? document.querySelector(`#wh-form [data-field="${field}"]`) : null;
  const words = err.code === "forbidden_url" || err.code === "invalid_url" || err.code === "unresolvable_host"
    ? whUrlWords(err)
    : String(err.message || "").replace(/\s*-\s*at `\$[^`]*`\s*$/, "");
  if (box) {
    const where = box.closest(".field") || box;
    where.classList.add("invalid");
    where.querySelector(".field-error").textContent = words;
    setError("#wh-error", `${what}: please fix “${where.querySelector("label").textContent.trim()}”.`);
    const input = where.querySelector("input");
    if (input) input.focus();
    return;
  }
  setError("#wh-error", `${what}: ${words}`);
}

function whUrlWords(err) {
  const base = {
    forbidden_url: "That address is not allowed (private or local network addresses are blocked).",
    invalid_url: "That is not a URL audioprep can send to.",
    unresolvable_host: "That host name does not resolve.",
  }[err.code];
  const msg = String(err.message || "").trim();
  return msg ? `${base} Details: ${msg}` : base;
}

function showSecret(title, secret) {
  $("#wh-secret-title").textContent = title;
  $("#wh-secret-value").textContent = secret;
  $("#wh-secret-note").textContent = "";
  show($("#wh-secret"));
}

function hideSecret() {
  $("#wh-secret-value").textContent = "";
  show($("#wh-secret"), false);
}

async function copySecret() {
  const secret = $("#wh-secret-value").textContent;
  let ok = false;
  try {
    await navigator.clipboard.writeText(secret);
    ok = true;
  } catch {
    // No clipboard API (not a secure context, or refused): copy the selected text instead.
    const range = document.createRange();
    range.selectNodeContents($("#wh-secret-value"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
  }
  $("#wh-secret-note").textContent = ok ? "Copied." : "Could not copy: select it and copy by hand.";
}

async function loadWebhooks() {
  let list;
  try {
    list = (await api("GET", "/api/webhooks")).webhooks || [];
  } catch (err) {
    setError("#wh-error", `Could not list the webhooks: ${err.message}`);
    return;
  }
  // Rebuilt only when something changed (the deliveries poll reloads it too).
  const changed = !wh.loaded || JSON.stringify(list) !== JSON.stringify(wh.endpoints);
  wh.endpoints = list;
  wh.loaded = true;
  if (wh.open) wh.open = list.find((e) => e.id === wh.open.id) || wh.open;
  if (changed) renderWebhooks();
}

function endpointState(ep) {
  if (ep.disabled) return { cls: "wh-disabled", text: `disabled: ${ep.disabledReason || "no reason given"}` };
  if (ep.failingSince) return { cls: "wh-failing", text: `failing since ${fmtWhen(ep.failingSince)}` };
  if (ep.lastSuccessAt) return { cls: "wh-ok", text: `active, last success ${fmtWhen(ep.lastSuccessAt)}` };
  return { cls: "wh-ok", text: "active" };
}

function button(text, action, id) {
  const b = el("button", null, text);
  b.type = "button";
  b.dataset.action = action;
  b.dataset.id = id;
  return b;
}

function renderWebhooks() {
  const body = $("#wh-table tbody");
  body.textContent = "";
  show($("#wh-empty"), wh.loaded && wh.endpoints.length === 0);
  show($("#wh-table"), wh.endpoints.length > 0);
  for (const ep of wh.endpoints) {
    const tr = el("tr");
    tr.dataset.id = ep.id;
    const url = el("td", "wh-url-cell");
    url.append(el("div", null, ep.url));
    if (ep.description) url.append(el("div", "note", ep.description));
    url.title = ep.id;
    const state = endpointState(ep);
    const actions = el("td", "wh-actions");
    actions.append(button("Deliveries", "deliveries", ep.id));
    if (ep.disabled) actions.append(button("Enable", "enable", ep.id));
    actions.append(button("Rotate secret", "rotate", ep.id), button("Delete", "delete", ep.id));
    tr.append(
      url,
      el("td", null, (ep.events || []).map((e) => e.replace(/^job\./, "")).join(", ")),
      el("td", null, ep.kinds && ep.kinds.length ? ep.kinds.join(", ") : "all"),
      el("td", `wh-state ${state.cls}`, state.text),
      actions,
    );
    body.append(tr);
  }
  if (wh.open && !wh.endpoints.some((e) => e.id === wh.open.id)) closeDeliveries();
}

async function addWebhook(e) {
  e.preventDefault();
  whClearErrors();
  hideSecret();
  const body = { url: $("#wh-url").value.trim() };
  body.events = [...document.querySelectorAll('input[name="wh-event"]:checked')].map((i) => i.value);
  const kinds = [...document.querySelectorAll('input[name="wh-kind"]:checked')].map((i) => i.value);
  if (kinds.length) body.kinds = kinds;
  const description = $("#wh-desc").value.trim();
  if (description) body.description = description;
  const btn = $("#wh-add");
  btn.disabled = true;
  let created;
  try {
    created = await api("POST", "/api/webhooks", body);
  } catch (err) {
    whProblem(err, "The endpoint was not added");
    return;
  } finally {
    btn.disabled = false;
  }
  showSecret(`Signing secret for ${created.url}`, created.secret);
  $("#wh-url").value = "";
  $("#wh-desc").value = "";
  await loadWebhooks();
}

async function webhookAction(e) {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  const ep = wh.endpoints.find((x) => x.id === b.dataset.id);
  if (!ep) return;
  setError("#wh-error", "");
  const act = b.dataset.action;
  try {
    if (act === "deliveries") {
      await openDeliveries(ep);
      return;
    }
    if (act === "delete") {
      if (!window.confirm(`Delete the webhook to ${ep.url}? Deliveries still retrying end at their next attempt.`)) return;
      await api("DELETE", `/api/webhooks/${ep.id}`);
      if (wh.open && wh.open.id === ep.id) closeDeliveries();
    } else if (act === "rotate") {
      if (!window.confirm(`New secret for ${ep.url}? The old one keeps signing beside it for a grace period.`)) return;
      const r = await api("POST", `/api/webhooks/${ep.id}/rotate-secret`);
      showSecret(
        `New signing secret for ${ep.url} (the old one also signs until ${fmtWhen(r.previousSecretExpiresAt)})`,
        r.secret,
      );
    } else if (act === "enable") {
      await api("POST", `/api/webhooks/${ep.id}/enable`);
    }
  } catch (err) {
    setError("#wh-error", `${b.textContent} failed: ${err.message}`);
  }
  await loadWebhooks();
}

async function openDeliveries(ep) {
  wh.open = ep;
  $("#wh-deliveries-title").textContent = `Deliveries to ${ep.url}`;
  show($("#wh-deliveries"));
  await refreshDeliveries();
}

function closeDeliveries() {
  wh.open = null;
  clearTimeout(wh.timer);
  show($("#wh-deliveries"), false);
  $("#wh-delivery-table tbody").textContent = "";
  wh.shown = "";
}

async function refreshDeliveries() {
  clearTimeout(wh.timer);
  const ep = wh.open;
  if (!ep) return;
  let list;
  try {
    // The endpoint's state too: a 410 answer disables it, a success clears "failing".
    await loadWebhooks();
    list = (await api("GET", `/api/webhooks/${ep.id}/deliveries?limit=50`)).deliveries || [];
  } catch (err) {
    if (!wh.open || wh.open.id !== ep.id) return;
    setError("#wh-error", `Could not list the deliveries: ${err.message}`);
    if (err.status === 404) closeDeliveries();
    return;
  }
  if (!wh.open || wh.open.id !== ep.id) return;
  renderDeliveries(wh.open, list);
  // Deliveries appear when jobs end and move on by themselves: keep the list fresh while open.
  if ($("#webhooks").open) wh.timer = setTimeout(refreshDeliveries, 1500);
}

function deliveryAnswer(d) {
  if (d.lastStatusCode != null) return `HTTP ${d.lastStatusCode}`;
  if (d.lastError) return d.lastError;
  return "–";
}

function renderDeliveries(ep, list) {
  // Rebuilt when something changed (or a retry's "next attempt in …" moves on).
  const key = JSON.stringify([ep.id, ep.disabled, list]);
  if (key === wh.shown && !list.some((d) => d.status === "retrying")) return;
  wh.shown = key;
  const body = $("#wh-delivery-table tbody");
  body.textContent = "";
  show($("#wh-deliveries-empty"), list.length === 0);
  show($("#wh-delivery-table"), list.length > 0);
  for (const d of list) {
    const tr = el("tr", `wh-delivery wh-${d.status}`);
    tr.dataset.id = d.id;
    const job = el("td", "wh-job");
    job.append(el("code", null, d.jobId));
    if (d.kind) job.append(el("span", "note", ` ${d.kind}`));
    const status = el("td", "wh-status", d.status + (d.replayOf ? " (replay)" : ""));
    if (d.replayOf) status.title = `replay of ${d.replayOf}`;
    const answer = el("td", "wh-code", deliveryAnswer(d));
    if (d.lastMessage) answer.title = d.lastMessage;
    const replay = el("td");
    const b = button("Replay", "replay", d.id);
    b.disabled = ep.disabled;
    if (ep.disabled) b.title = "The endpoint is disabled: enable it first";
    replay.append(b);
    tr.append(
      el("td", null, d.event),
      job,
      status,
      el("td", "wh-attempts", String(d.attempts || 0)),
      answer,
      el("td", "wh-next", d.status === "retrying" ? fmtNext(d.nextAttemptAt) : "–"),
      replay,
    );
    tr.title = `webhook-id ${d.id}, created ${fmtWhen(d.createdAt)}`;
    body.append(tr);
  }
}

async function replayDelivery(e) {
  const b = e.target.closest("button[data-action='replay']");
  if (!b || !wh.open) return;
  b.disabled = true;
  setError("#wh-error", "");
  try {
    await api("POST", `/api/webhooks/${wh.open.id}/deliveries/${b.dataset.id}/replay`);
  } catch (err) {
    setError("#wh-error", `Replay failed: ${err.message}`);
    b.disabled = false;
    return;
  }
  await refreshDeliveries();
}

function setupWebhooks() {
  const panel = $("#webhooks");
  panel.addEventListener("toggle", () => {
    if (panel.open) {
      loadWebhooks();
      if (wh.open) refreshDeliveries();
    } else {
      clearTimeout(wh.timer);
    }
  });
  $("#wh-form").addEventListener("submit", addWebhook);
  $("#wh-form").addEventListener("input", (e) => {
    const box = e.target.closest(".field");
    if (box && box.classList.contains("invalid")) {
      box.classList.remove("invalid");
      box.querySelector(".field-error").textContent = "";
      if (!document.querySelector("#wh-form .field.invalid")) setError("#wh-error", "");
    }
  });
  $("#wh-table").addEventListener("click", webhookAction);
  $("#wh-delivery-table").addEventListener("click", replayDelivery);
  $("#wh-refresh").addEventListener("click", refreshDeliveries);
  $("#wh-deliveries-close").addEventListener("click", closeDeliveries);
  $("#wh-secret-copy").addEventListener("click", copySecret);
  $("#wh-secret-done").addEventListener("click", hideSecret);
}

// ---- wiring ------------------------------------------------------------------------------

function setupIngest() {
  const drop = $("#drop");
  const input = $("#file-input");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) ingestFile(input.files[0]);
    input.value = "";
  });
  for (const t of ["dragenter", "dragover"]) {
    drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) ingestFile(file);
  });
  // A file dropped anywhere else must not make the browser navigate away.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("#url-input").value.trim();
    if (url) ingestUrl(url);
  });
}

function setupKey() {
  const input = $("#api-key");
  input.value = apiKey();
  // Open servers need no key: the box stays hidden unless a 401 says otherwise.
  $("#key-box").hidden = AUTH_MODE === "open" && !apiKey();
  input.addEventListener("change", () => {
    const v = input.value.trim();
    if (v) sessionStorage.setItem(STORE_KEY, v);
    else sessionStorage.removeItem(STORE_KEY);
  });
}

async function restore() {
  renderJobs();
  for (const j of jobs.values()) {
    if (!TERMINAL.has(j.status)) {
      followJob(j.jobId, (v) => recordJob(j.jobId, j.kind, j.label, v));
    }
  }
  const saved = JSON.parse(sessionStorage.getItem(STORE_SOURCE) || "null");
  if (!saved) return;
  try {
    const view = await api("GET", `/api/audio/jobs/${saved.jobId}`);
    if (view.status === "completed") await loadSource(view, saved.label);
  } catch {
    sessionStorage.removeItem(STORE_SOURCE);
  }
}

function main() {
  setupKey();
  setupIngest();
  setupWaveDrag();
  const form = $("#recipe-form");
  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("input", (e) => {
    const box = e.target.closest(".field");
    if (box) {
      box.classList.remove("invalid");
      box.querySelector(".field-error").textContent = "";
    }
    if (!document.querySelector("#recipe-form .field.invalid")) setError("#recipe-error", "");
    if (e.target.id === "trim-start" || e.target.id === "trim-end") inputsToSel();
    if (e.target.id === "normalize") syncNormalize();
    if (e.target.closest("#voice")) syncVoice();
    editChanged();
  });
  const saveRow = $("#save .save-row");
  saveRow.addEventListener("input", (e) => {
    const box = e.target.closest(".field");
    if (box && box.classList.contains("invalid")) {
      box.classList.remove("invalid");
      box.querySelector(".field-error").textContent = "";
    }
    if (e.target.id === "save-format") syncSaveOptions();
    saveEdit();
  });
  syncSaveOptions();
  syncNormalize();
  syncVoice();
  setupShortcuts();
  $("#preview-btn").addEventListener("click", preview);
  $("#reset-btn").addEventListener("click", () => {
    resetRecipe();
    editChanged();
    resetPlayer();
  });
  $("#save-btn").addEventListener("click", save);
  $("#cancel-btn").addEventListener("click", cancelSave);
  setupWebhooks();
  setupPresets();
  document.body.dataset.ready = "1";
  restore();
}

main();
