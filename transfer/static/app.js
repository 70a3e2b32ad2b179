// The page of `transfer serve`: plain JavaScript, no build step, nothing from the network
// but this server's own API.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const modelSelect = $("model");
  const topInput = $("top");
  const statusLine = $("status");
  const results = $("results");
  const reportLink = $("report-link");
  const modelInfo = $("model-info");
  const fileInput = $("file-input");
  const drop = $("drop");
  const video = $("webcam");
  const digitSection = $("digit");
  const canvas = $("digit-canvas");
  const MAX_FILES = 64; // per request, as the server allows
  const FORM_BYTES = 1024; // a file's multipart headers, counted generously
  let maxUploadBytes = Infinity; // a request's body, at most (--max-upload-mb, /api/models)
  const EXPLAINED = 8; // Grad-CAM pictures asked for per batch of photos
  const UNREACHABLE = "the server cannot be reached (is transfer serve still running?)";
  let models = [];
  let modelsDir = ""; // the server's --models-dir, as given
  let stream = null;
  let counter = 0;
  // "model|name|size" of each file being classified: the same file given again to the same
  // model meanwhile (a double drop, a second paste) is not sent twice
  const inFlight = new Set();

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function current() {
    return models.find((m) => m.name === modelSelect.value) || null;
  }

  function pretty(label) {
    return String(label).replace(/_/g, " ");
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.detail ? String(typeof body.detail === "string" ? body.detail
        : JSON.stringify(body.detail)) : response.statusText;
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  // ---------------------------------------------------------------- models

  // The server's models in the list. Again later (a model gone since the page loaded):
  // the model chosen stays chosen while it is listed, and "classes shown" as the user set it.
  async function loadModels() {
    const again = document.body.dataset.ready === "1";
    const chosen = modelSelect.value;
    const response = await fetch("/api/models");
    if (!response.ok) {
      say("cannot list the models: " + (await errorText(response)), true);
      return;
    }
    const data = await response.json();
    models = data.models;
    modelsDir = data.models_dir || "";
    if (data.max_upload_mb) maxUploadBytes = data.max_upload_mb * 1048576;
    modelSelect.textContent = "";
    for (const m of models) {
      const option = document.createElement("option");
      option.value = m.name;
      let text = m.kind === "imagenet" ? m.title : m.name;
      if (m.kind === "bundle") {
        const classes = m.classes.length > 4 ? m.classes.length + " classes"
          : m.classes.join(", ");
        text += " (" + [m.base, classes].filter(Boolean).join(", ");
        if (m.accuracy !== null && m.accuracy !== undefined) {
          text += ", accuracy " + Number(m.accuracy).toFixed(3);
        }
        text += ")";
      }
      option.textContent = text;
      modelSelect.appendChild(option);
    }
    if (again && models.some((m) => m.name === chosen)) {
      modelSelect.value = chosen;
    } else if (data.default && models.some((m) => m.name === data.default)) {
      modelSelect.value = data.default;
    }
    if (data.top) {
      // `serve --top 30`: the field takes what the server was told to show (its max was 20,
      // so the field was invalid and the cards showed 20)
      if (data.top > Number(topInput.max)) topInput.max = String(data.top);
      if (!again) topInput.value = data.top;
    }
    if (!models.length) {
      say("No model: train one with `transfer train` into the models folder" +
        (modelsDir ? " (" + modelsDir + ")" : "") + ".", true);
    }
    modelChanged();
    document.body.dataset.ready = "1";
  }

  function modelChanged() {
    const m = current();
    const digits = Boolean(m && m.digits);
    digitSection.hidden = !digits;
    if (m && m.report) {
      reportLink.href = m.report;
      reportLink.hidden = false;
    } else {
      reportLink.hidden = true;
    }
    if (!m) {
      modelInfo.textContent = "";
    } else if (m.kind === "imagenet") {
      modelInfo.textContent = "ImageNet classifier of " + m.base + ": 1000 everyday classes." +
        (models.some((b) => b.kind === "bundle") ? "" : " The models folder" +
          (modelsDir ? " (" + modelsDir + ")" : "") + " holds no bundle of yours.");
    } else {
      modelInfo.textContent = "Classes: " + m.classes.join(", ") + (digits
        ? ". Draw a digit below, or give a photo of one." : ".");
    }
  }

  // ---------------------------------------------------------------- results

  function card(file) {
    counter += 1;
    const box = document.createElement("article");
    box.className = "result";
    box.dataset.state = "pending";
    box.id = "result-" + counter;
    const thumb = document.createElement("img");
    thumb.className = "thumb";
    thumb.alt = file.name;
    thumb.src = URL.createObjectURL(file);
    thumb.addEventListener("error", () => { // not an image the browser shows: no broken icon
      const none = document.createElement("div");
      none.className = "thumb none";
      none.textContent = "no preview";
      thumb.replaceWith(none);
    }, { once: true });
    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("h3");
    title.textContent = file.name;
    const answer = document.createElement("div");
    answer.className = "answer";
    answer.textContent = "classifying ...";
    body.append(title, answer);
    box.append(thumb, body);
    return box;
  }

  // A batch's cards in the order the photos were given: its first request's on top of the
  // earlier cards, each next request's after the previous one's (``after``: its last card).
  function cards(files, after) {
    const boxes = files.map(card);
    if (after) after.after(...boxes);
    else results.prepend(...boxes);
    return boxes;
  }

  // A probability as the server sent it: null when the model gave no number (diverged).
  function percent(p, digits) {
    return p === null || p === undefined || !isFinite(p) ? "n/a" : (100 * p).toFixed(digits) + "%";
  }

  // seconds: the server's time for the request, which held `together` photos; by: the model
  // that answered (cards of several models side by side say which is which)
  function showPrediction(box, item, seconds, together, by) {
    const answer = box.querySelector(".answer");
    answer.textContent = "";
    if (item.error) {
      box.dataset.state = "error";
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = item.error;
      answer.appendChild(p);
      return;
    }
    box.dataset.state = "done";
    box.dataset.label = item.label;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = pretty(item.label) + " " + percent(item.probability, 1);
    if (item.probability === null) {
      label.textContent += " (the model gives no usable probability: did its training diverge?)";
    }
    answer.appendChild(label);
    const bars = document.createElement("div");
    bars.className = "bars";
    for (const entry of item.top) {
      const row = document.createElement("div");
      row.className = "bar";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = pretty(entry.label);
      name.title = entry.label;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = Math.max(0, Math.min(100, 100 * (entry.probability || 0))).toFixed(1) +
        "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = entry.probability === null ? "n/a" : entry.probability.toFixed(4);
      row.append(name, track, value);
      bars.appendChild(row);
    }
    answer.appendChild(bars);
    const time = document.createElement("p");
    time.className = "time";
    if (by) {
      box.dataset.model = by.name;
      const model = document.createElement("span");
      model.className = "model";
      model.textContent = by.title || by.name;
      time.append("by ", model, ", ");
    }
    time.append("server time " + (1000 * seconds).toFixed(0) + " ms" +
      (together > 1 ? " for the " + together + " photos sent together" : ""));
    answer.appendChild(time);
  }

  // Grad-CAM of one photo on its card; false when the server cannot be reached (then the
  // page asks for no more: each remaining photo said "Failed to fetch" one after another)
  async function explainOne(box, file, model) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (model) form.append("model", model);
    form.append("view", "overlay");
    const note = document.createElement("p");
    note.className = "time gradcam-note";
    note.textContent = "Grad-CAM ...";
    box.querySelector(".body").appendChild(note);
    let response;
    try {
      response = await fetch("/api/explain", { method: "POST", body: form });
    } catch (e) {
      note.textContent = "no Grad-CAM: the server cannot be reached";
      return false;
    }
    try {
      if (!response.ok) {
        note.textContent = "no Grad-CAM: " + (response.status === 404 && model
          ? gone(model) : await errorText(response));
        return true;
      }
      const blob = await response.blob();
      const img = document.createElement("img");
      img.className = "gradcam";
      img.alt = "Grad-CAM overlay of " + file.name;
      img.src = URL.createObjectURL(blob);
      const label = decodeURIComponent(response.headers.get("X-Label") || "");
      const ms = 1000 * Number(response.headers.get("X-Server-Seconds") || 0);
      note.textContent = "Grad-CAM of " + pretty(label) + " (where the model looked), " +
        ms.toFixed(0) + " ms";
      box.querySelector(".body").insertBefore(img, note);
    } catch (e) {
      note.textContent = "no Grad-CAM: " + e;
    }
    return true;
  }

  // a 404 for a model the page listed: it went away after the page loaded
  function gone(model) {
    return model.startsWith("imagenet:")
      ? "the model " + model + " is no longer offered (its weights left the server's Keras " +
        "cache since the page loaded)"
      : "the model " + model + " is gone from the models folder (deleted or renamed since " +
        "the page loaded)";
  }

  // The files in requests the server takes: at most MAX_FILES each and, together with the
  // form's other fields, at most --max-upload-mb (six phone photos of 4 MB are two requests).
  // A file over the limit by itself is never sent: it is [file] alone, shown as refused.
  function requests(files) {
    const room = maxUploadBytes - 4 * FORM_BYTES; // the model and top fields
    const out = [];
    let chunk = [];
    let bytes = 0;
    for (const f of files) {
      const size = f.size + FORM_BYTES;
      if (chunk.length && (chunk.length === MAX_FILES || bytes + size > room)) {
        out.push(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push(f);
      bytes += size;
    }
    if (chunk.length) out.push(chunk);
    return out;
  }

  // "classes shown": 1 to the field's max (20, or the server's --top), 3 when it cannot be read
  function shownClasses() {
    const n = parseInt(topInput.value, 10);
    return Number.isNaN(n) ? 3 : Math.max(1, Math.min(Number(topInput.max) || 20, n));
  }

  function fileKey(model, f) {
    return model + "|" + f.name + "|" + f.size;
  }

  async function classify(files) {
    files = Array.from(files).filter((f) => f && f.size !== undefined);
    if (!files.length) return;
    const m = current();
    const model = m ? m.name : "";
    const given = files;
    files = files.filter((f) => !inFlight.has(fileKey(model, f)));
    if (!files.length) { // a double drop or paste: the first is still on its way
      say(given.length === 1
        ? given[0].name + " is being classified already: its answer comes in its card"
        : "these " + given.length + " files are being classified already: their answers " +
          "come in their cards");
      return;
    }
    const keys = files.map((f) => fileKey(model, f));
    keys.forEach((k) => inFlight.add(k));
    try {
      await classifyBatch(files, model);
    } finally {
      keys.forEach((k) => inFlight.delete(k));
    }
  }

  async function classifyBatch(files, model) {
    const limit = Number((maxUploadBytes / 1048576).toPrecision(3));
    const chunks = requests(files);
    // several requests: the status line ends with what all of them did, not the last one's
    const tally = { classified: 0, failed: 0, sent: 0, problem: "",
      name: model || "the default model" };
    let last = null; // the previous request's last card
    let explained = 0; // Grad-CAM pictures asked for, in all this batch's requests
    let stop = ""; // why the remaining requests are not sent (the server or the model gone)
    for (const chunk of chunks) {
      const boxes = cards(chunk, last);
      last = boxes[boxes.length - 1];
      tally.failed += chunk.length; // until the server's answer says otherwise
      if (stop) {
        boxes.forEach((b) => showPrediction(b, { error: "not sent: " + stop }, 0));
        continue;
      }
      if (chunk.length === 1 && chunk[0].size + 5 * FORM_BYTES > maxUploadBytes) {
        const text = "too large: " + (chunk[0].size / 1048576).toFixed(1) + " MiB, and the " +
          "server takes at most " + limit + " MiB a request (transfer serve --max-upload-mb)";
        showPrediction(boxes[0], { error: text }, 0);
        say(chunk[0].name + " is " + text, true);
        continue;
      }
      const form = new FormData();
      for (const f of chunk) form.append("files", f, f.name);
      if (model) form.append("model", model);
      form.append("top", String(shownClasses()));
      say("classifying " + chunk.length + " image(s) with " + (model || "the default model") + " ...");
      let response;
      tally.sent += 1;
      try {
        response = await fetch("/api/predict", { method: "POST", body: form });
      } catch (e) {
        tally.problem = UNREACHABLE;
        stop = "the server cannot be reached";
        say(tally.problem, true);
        boxes.forEach((b) => showPrediction(b, { error: "no answer from the server" }, 0));
        continue;
      }
      if (response.status === 415) {
        const body = await response.json();
        (body.errors || []).forEach((e, i) => showPrediction(boxes[i], e, 0));
        say(body.detail, true);
        continue;
      }
      if (response.status === 404 && model) {
        // the model chosen was deleted or renamed after the page listed it: the API's words
        // ("GET /api/models lists them") are for its clients; the page lists the models again
        let text = await errorText(response);
        try {
          await loadModels();
          if (!models.some((x) => x.name === model)) {
            text = gone(model) + ": the list of models is updated, choose one";
            stop = "the model " + model + " is gone";
            tally.problem = text;
          }
        } catch (e) { /* the list stays as it was; the API's words say what happened */ }
        boxes.forEach((b) => showPrediction(b, { error: text }, 0));
        say(text, true);
        continue;
      }
      if (!response.ok) {
        const text = await errorText(response);
        boxes.forEach((b) => showPrediction(b, { error: text }, 0));
        say(text, true);
        continue;
      }
      const data = await response.json();
      tally.failed -= data.predictions.length - data.failed;
      tally.classified += data.predictions.length - data.failed;
      tally.name = data.model;
      const by = { name: data.model, title: data.title };
      data.predictions.forEach((item, i) => {
        try {
          showPrediction(boxes[i], item, data.server_seconds, chunk.length, by);
        } catch (e) { // one odd answer must not end the batch (its status, the next requests)
          showPrediction(boxes[i], { error: "this answer cannot be shown (" + e + ")" }, 0);
        }
      });
      say(data.model + ": " + (data.predictions.length - data.failed) + " classified" +
        (data.failed ? ", " + data.failed + " failed" : "") + " in " +
        (1000 * data.server_seconds).toFixed(0) + " ms (server time)", data.failed > 0);
      for (let i = 0; i < chunk.length; i += 1) {
        if (data.predictions[i].error) continue;
        if (stop) { // the server went away during this request's Grad-CAMs: none asked for
          const note = document.createElement("p");
          note.className = "time gradcam-note";
          note.textContent = "no Grad-CAM: " + stop;
          boxes[i].querySelector(".body").appendChild(note);
          continue;
        }
        if (explained >= EXPLAINED) {
          const note = document.createElement("p");
          note.className = "time gradcam-note";
          note.textContent = "no Grad-CAM: the page draws it for the first " + EXPLAINED +
            " photos given at once (give this one alone to see it)";
          boxes[i].querySelector(".body").appendChild(note);
          continue;
        }
        explained += 1;
        if (!(await explainOne(boxes[i], chunk[i], model))) {
          tally.problem = UNREACHABLE;
          stop = "the server cannot be reached";
          say(UNREACHABLE, true);
        }
      }
    }
    if (tally.sent > 1 || (tally.sent && tally.sent < chunks.length)) {
      say(tally.name + ": " + tally.classified + " classified" +
        (tally.failed ? ", " + tally.failed + " failed (see their cards)" : "") + ", in " +
        tally.sent + " request" + (tally.sent > 1 ? "s" : "") +
        (tally.problem ? "; " + tally.problem : ""), tally.failed > 0 || Boolean(tally.problem));
    }
  }

  // ---------------------------------------------------------------- inputs

  fileInput.addEventListener("change", () => {
    classify(fileInput.files);
    fileInput.value = "";
  });
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => {
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (!event.dataTransfer.files.length) { // a link or text dragged from a page, not a file
      say("nothing to classify: drop photo files (a link or text from a page is not a file)",
        true);
      return;
    }
    classify(event.dataTransfer.files);
  });
  // a photo dropped beside the zone must not make the browser leave the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData || {}).items || []);
    const files = items.filter((i) => i.kind === "file").map((i, n) => {
      const f = i.getAsFile();
      return f && f.name ? f : new File([f], "pasted-" + (n + 1) + ".png", { type: f.type });
    });
    if (files.length) {
      event.preventDefault();
      classify(files);
    }
  });
  modelSelect.addEventListener("change", modelChanged);

  // ---------------------------------------------------------------- webcam

  $("webcam-start").addEventListener("click", async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("this browser gives no webcam here (it needs https or localhost)", true);
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      say("no webcam: " + e.message, true);
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    $("webcam-snap").hidden = false;
    $("webcam-stop").hidden = false;
    $("webcam-start").hidden = true;
    $("webcam-snap").focus(); // the button pressed is gone: focus where the next step is
    say("webcam on: hold something up and take the photo");
  });

  function stopWebcam() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    delete video.dataset.live;
    video.hidden = true;
    $("webcam-snap").hidden = true;
    $("webcam-stop").hidden = true;
    $("webcam-start").hidden = false;
    if (document.activeElement === document.body) $("webcam-start").focus();
  }

  video.addEventListener("loadeddata", () => { video.dataset.live = "1"; });
  $("webcam-stop").addEventListener("click", stopWebcam);
  $("webcam-snap").addEventListener("click", async () => {
    if (!video.videoWidth) {
      await new Promise((resolve) => video.addEventListener("loadeddata", resolve,
        { once: true }));
    }
    const shot = document.createElement("canvas");
    shot.width = video.videoWidth;
    shot.height = video.videoHeight;
    shot.getContext("2d").drawImage(video, 0, 0);
    shot.toBlob((blob) => {
      classify([new File([blob], "webcam-" + new Date().toISOString().slice(11, 19)
        .replace(/:/g, "") + ".jpg", { type: "image/jpeg" })]);
    }, "image/jpeg", 0.92);
  });

  // ---------------------------------------------------------------- digit canvas

  const pen = canvas.getContext("2d");
  let drawing = false;
  let drawn = false;

  function clearCanvas() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, canvas.width, canvas.height);
    drawn = false;
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * canvas.width / rect.width,
      (event.clientY - rect.top) * canvas.height / rect.height];
  }

  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = point(event);
    pen.strokeStyle = "#fff";
    pen.fillStyle = "#fff";
    pen.lineWidth = 22;
    pen.lineCap = "round";
    pen.lineJoin = "round";
    pen.beginPath();
    pen.arc(x, y, pen.lineWidth / 2, 0, 2 * Math.PI);
    pen.fill();
    pen.beginPath();
    pen.moveTo(x, y);
    drawn = true;
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    pen.lineTo(x, y);
    pen.stroke();
    event.preventDefault();
  });
  function endStroke() {
    drawing = false;
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  $("digit-clear").addEventListener("click", clearCanvas);
  // busy from the click until its answer: a double click sent the drawing twice (two cards)
  const digitButton = $("digit-classify");
  digitButton.addEventListener("click", () => {
    if (digitButton.getAttribute("aria-disabled") === "true") return;
    if (!drawn) {
      say("draw a digit first", true);
      return;
    }
    digitButton.setAttribute("aria-disabled", "true"); // not disabled: it keeps the focus
    canvas.toBlob((blob) => {
      classify([new File([blob], "drawing.png", { type: "image/png" })])
        .finally(() => digitButton.removeAttribute("aria-disabled"));
    }, "image/png");
  });
  clearCanvas();

  loadModels().catch((e) => say("cannot list the models: " + e, true));
})();
