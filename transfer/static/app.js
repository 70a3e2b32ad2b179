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
    } else if (again && models.length) {
      // the model chosen is gone: none is chosen until the user picks one (the default,
      // chosen silently, answered the next photos while the page said "choose one")
      const none = document.createElement("option");
      none.value = "";
      none.textContent = "(choose a model)";
      none.disabled = true;
      modelSelect.prepend(none);
      modelSelect.value = "";
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
      modelInfo.textContent = models.length ? "No model is chosen: choose one in the list." : "";
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

  // The name a card shows: a photo read from a dropped folder keeps its folder
  // ("my_flowers/rose.jpg"); the file sent is named as on disk.
  function shownName(file) {
    return file.shownName || file.name;
  }

  // file: a File, or {name, error} for what is not sent (a dropped folder with no photo in it)
  function card(file) {
    counter += 1;
    const box = document.createElement("article");
    box.className = "result";
    box.dataset.state = "pending";
    box.id = "result-" + counter;
    const none = document.createElement("div");
    none.className = "thumb none";
    none.textContent = "no preview";
    let thumb = none;
    if (file instanceof Blob) {
      thumb = document.createElement("img");
      thumb.className = "thumb";
      thumb.alt = shownName(file);
      thumb.src = URL.createObjectURL(file);
      thumb.addEventListener("error", () => thumb.replaceWith(none), { once: true });
    }
    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("h3");
    title.textContent = shownName(file);
    const answer = document.createElement("div");
    answer.className = "answer";
    answer.textContent = "classifying ...";
    body.append(title, answer);
    box.append(thumb, body);
    return box;
  }

  // A probability in percent, as the server sent it: null when the model gave no number
  // (diverged). 0.99996 is ">99.9%", not "100.0%", and 0.00003 "<0.01%", not "0.0%": a
  // rounded number must not claim a certainty the model did not give.
  function percent(p) {
    if (p === null || p === undefined || !isFinite(p)) return "n/a";
    if (p >= 0.9995) return ">99.9%";
    if (p < 0.0001) return "<0.01%";
    return (100 * p).toFixed(100 * p < 0.1 ? 2 : 1) + "%";
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
    label.textContent = pretty(item.label) + " " + percent(item.probability);
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
      value.textContent = percent(entry.probability);
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

  // A line under a card's answer about its Grad-CAM ("Grad-CAM ..." while it waits its turn)
  function gradcamNote(box, text) {
    const note = document.createElement("p");
    note.className = "time gradcam-note";
    note.textContent = text;
    box.querySelector(".body").appendChild(note);
    return note;
  }

  // Grad-CAM of one photo on its card, told in its note; false when the server cannot be
  // reached (then the page asks for no more: each remaining photo said "Failed to fetch" one
  // after another), the note's words when the model is gone (the same for every photo left)
  async function explainOne(box, file, model, note) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (model) form.append("model", model);
    form.append("view", "overlay");
    let response;
    try {
      response = await fetch("/api/explain", { method: "POST", body: form });
    } catch (e) {
      note.textContent = "no Grad-CAM: the server cannot be reached";
      return false;
    }
    try {
      if (!response.ok) {
        if (response.status === 404 && model) {
          note.textContent = "no Grad-CAM: " + gone(model);
          return note.textContent;
        }
        note.textContent = "no Grad-CAM: " + await errorText(response);
        return true;
      }
      const blob = await response.blob();
      const img = document.createElement("img");
      img.className = "gradcam";
      img.alt = "Grad-CAM overlay of " + file.name;
      img.src = URL.createObjectURL(blob);
      const label = decodeURIComponent(response.headers.get("X-Label") || "");
      const ms = 1000 * Number(response.headers.get("X-Server-Seconds") || 0);
      const empty = response.headers.get("X-Map-Note");  // the map shows nothing: why
      note.textContent = empty
        ? "Grad-CAM: " + pretty(decodeURIComponent(empty)) + ", " + ms.toFixed(0) + " ms"
        : "Grad-CAM of " + pretty(label) + " (where the model looked), " + ms.toFixed(0) +
          " ms";
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
    return model + "|" + shownName(f) + "|" + f.size;
  }

  // items: Files, and {name, error} for what cannot be sent (shown on a card of its own)
  async function classify(items) {
    items = Array.from(items).filter((f) => f && (f.error || f.size !== undefined));
    if (!items.length) return;
    if (models.length && !modelSelect.value) { // the model chosen was deleted: none is chosen
      say("choose a model in the list first", true);
      modelSelect.focus();
      return;
    }
    const m = current();
    const model = m ? m.name : "";
    const given = items;
    items = items.filter((f) => !(f instanceof Blob) || !inFlight.has(fileKey(model, f)));
    if (!items.length) { // a double drop or paste: the first is still on its way
      say(given.length === 1
        ? shownName(given[0]) + " is being classified already: its answer comes in its card"
        : "these " + given.length + " files are being classified already: their answers " +
          "come in their cards");
      return;
    }
    const keys = items.filter((f) => f instanceof Blob).map((f) => fileKey(model, f));
    keys.forEach((k) => inFlight.add(k));
    try {
      await classifyBatch(items, model);
    } finally {
      keys.forEach((k) => inFlight.delete(k));
    }
  }

  const UNREADABLE = "cannot be read: it was changed, moved or deleted since it was given " +
    "(give it again)";

  // The files of a request that the browser cannot read (changed or deleted on disk since
  // they were chosen, a folder): fetch refused the whole request for one of them, which the
  // page took for a server gone. Reading a byte of each finds them, each its own error.
  async function unreadable(files) {
    const bad = new Set();
    for (const f of files) {
      try {
        await f.slice(0, 1).arrayBuffer();
      } catch (e) {
        bad.add(f);
      }
    }
    return bad;
  }

  // One request of a batch: [the files sent, the answer, null if the server cannot be
  // reached]. A file the browser cannot read is left out (unsent(file)) before and, when
  // fetch fails, after: then the others are sent again.
  async function send(chunk, model, unsent) {
    let bad = await unreadable(chunk); // each file read once per attempt
    while (chunk.length) {
      bad.forEach(unsent);
      chunk = chunk.filter((f) => !bad.has(f));
      if (!chunk.length) break;
      const form = new FormData();
      for (const f of chunk) form.append("files", f, f.name);
      if (model) form.append("model", model);
      form.append("top", String(shownClasses()));
      try {
        return [chunk, await fetch("/api/predict", { method: "POST", body: form })];
      } catch (e) {
        bad = await unreadable(chunk);
        if (!bad.size) return [chunk, null];
      }
    }
    return [chunk, null];
  }

  // The status line of a batch while its requests go and after: "2 of 3 classified ..." until
  // the last answer, then what all of them did (not the last request's answer alone)
  function progress(tally) {
    return tally.name + ": " + tally.classified + " of " + tally.total + " classified" +
      (tally.failed ? ", " + tally.failed + " failed" : "") + " ...";
  }

  function summary(tally, chunks, seconds) {
    if (tally.sent === 1 && chunks === 1) {
      return tally.name + ": " + tally.classified + " classified" +
        (tally.failed ? ", " + tally.failed + " failed" : "") + " in " +
        (1000 * seconds).toFixed(0) + " ms (server time)";
    }
    return tally.name + ": " + tally.classified + " classified" +
      (tally.failed ? ", " + tally.failed + " failed (see their cards)" : "") + ", in " +
      tally.sent + " request" + (tally.sent > 1 ? "s" : "") +
      (tally.problem ? "; " + tally.problem : "");
  }

  // A request's answers on their cards ([box, file] each, in the order sent), counted in the
  // batch's tally; the first EXPLAINED photos answered get their Grad-CAM's turn (gradcams)
  function showAnswers(data, sent, tally, gradcams) {
    const by = { name: data.model, title: data.title };
    data.predictions.forEach((item, i) => {
      const [box, file] = sent[i];
      try {
        showPrediction(box, item, data.server_seconds, sent.length, by);
      } catch (e) { // one odd answer must not end the batch (its status, the next requests)
        showPrediction(box, { error: "this answer cannot be shown (" + e + ")" }, 0);
      }
      if (box.dataset.state !== "done") {
        tally.failed += 1;
        return;
      }
      tally.classified += 1;
      if (gradcams.length < EXPLAINED) {
        gradcams.push([box, file, gradcamNote(box, "Grad-CAM ...")]);
      } else {
        gradcamNote(box, "no Grad-CAM: the page draws it for the first " + EXPLAINED +
          " photos given at once (give this one alone to see it)");
      }
    });
  }

  // Every photo's card at once, in the order given; then the requests one after another,
  // the status line counting the answers; then the Grad-CAMs (slower: the answers come first).
  async function classifyBatch(items, model) {
    const limit = Number((maxUploadBytes / 1048576).toPrecision(3));
    const boxes = items.map(card);
    results.prepend(...boxes);
    const boxOf = new Map();
    const files = [];
    const tally = { classified: 0, failed: 0, sent: 0, problem: "", total: items.length,
      name: model || "the default model" };
    items.forEach((item, i) => {
      if (item instanceof Blob) {
        files.push(item);
        boxOf.set(item, boxes[i]);
      } else {
        showPrediction(boxes[i], { error: item.error }, 0);
        tally.failed += 1;
      }
    });
    const fail = (file, text) => {
      showPrediction(boxOf.get(file), { error: text }, 0);
      tally.failed += 1;
    };
    const chunks = requests(files);
    const gradcams = []; // [box, file, note] of the photos whose Grad-CAM is drawn
    let seconds = null; // the server's time for the last request it answered
    let stop = ""; // why the remaining requests are not sent (the server or the model gone)
    let shown = ""; // the last error said, when no request was answered
    if (!files.length) shown = items[0].name + ": " + items[0].error;
    for (let chunk of chunks) {
      if (stop) {
        chunk.forEach((f) => fail(f, "not sent: " + stop));
        continue;
      }
      if (chunk.length === 1 && chunk[0].size + 5 * FORM_BYTES > maxUploadBytes) {
        const text = "too large: " + (chunk[0].size / 1048576).toFixed(1) + " MiB, and the " +
          "server takes at most " + limit + " MiB a request (transfer serve --max-upload-mb)";
        fail(chunk[0], text);
        shown = shownName(chunk[0]) + " is " + text;
        continue;
      }
      say(tally.sent ? progress(tally) : "classifying " + files.length + " image(s) with " +
        (model || "the default model") + " ...");
      let response;
      [chunk, response] = await send(chunk, model, (f) => {
        fail(f, UNREADABLE);
        shown = shownName(f) + " " + UNREADABLE;
      });
      if (!chunk.length) continue;
      tally.sent += 1;
      if (!response) {
        tally.problem = UNREACHABLE;
        stop = "the server cannot be reached";
        say(tally.problem, true);
        chunk.forEach((f) => fail(f, "no answer from the server"));
        continue;
      }
      if (response.status === 415) {
        const body = await response.json();
        (body.errors || []).forEach((e, i) => showPrediction(boxOf.get(chunk[i]), e, 0));
        tally.failed += chunk.length;
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
            text = gone(model) + ": the list of models is updated; choose a model in it";
            stop = "the model " + model + " is gone";
            tally.problem = text;
          }
        } catch (e) { /* the list stays as it was; the API's words say what happened */ }
        chunk.forEach((f) => fail(f, text));
        say(text, true);
        continue;
      }
      if (!response.ok) {
        const text = await errorText(response);
        chunk.forEach((f) => fail(f, text));
        say(text, true);
        continue;
      }
      const data = await response.json();
      seconds = data.server_seconds;
      tally.name = data.model;
      showAnswers(data, chunk.map((f) => [boxOf.get(f), f]), tally, gradcams);
      say(progress(tally), tally.failed > 0);
    }
    if (tally.sent > 1 || (tally.sent && (tally.sent < chunks.length || seconds !== null))) {
      // one request refused (a 404, a 415): its own words stay on the status line
      say(summary(tally, chunks.length, seconds), tally.failed > 0 || Boolean(tally.problem));
    } else if (!tally.sent && shown) {
      say(shown, true);
    }
    await drawGradcams(gradcams, model);
  }

  // The batch's Grad-CAMs one after another; the server or the model gone, the rest are not
  // asked for (a photo changed on disk meanwhile is its own "cannot be read", not a server
  // gone)
  async function drawGradcams(gradcams, model) {
    let lost = false;
    let goneNote = null;
    for (const [box, file, note] of gradcams) {
      if (lost) {
        note.textContent = "no Grad-CAM: the server cannot be reached";
        continue;
      }
      if (goneNote) {
        note.textContent = goneNote;
        continue;
      }
      const done = await explainOne(box, file, model, note);
      if (typeof done === "string") {
        // a 404 for the model that answered: the page lists the models again, as when a photo
        // is sent to a model that is gone; gone from the list, the rest are not asked for (a
        // bundle replaced under its name is there again: the next photo is asked)
        try {
          await loadModels();
          if (!models.some((x) => x.name === model)) {
            goneNote = done;
            say(gone(model) + ": the list of models is updated; choose a model in it", true);
          }
        } catch (e) { /* the list stays as it was; each card's note says what happened */ }
      } else if (!done) {
        if ((await unreadable([file])).size) {
          note.textContent = "no Grad-CAM: the photo " + UNREADABLE;
          continue;
        }
        lost = true;
        say(UNREACHABLE, true);
      }
    }
  }

  // ---------------------------------------------------------------- dropped folders

  const PHOTO = /\.(jpe?g|png|gif|bmp|webp|tiff?|heic|heif|avif)$/i;
  const FOLDER_PHOTOS = 200; // photos read from the folders of one drop, at most

  // A folder's entries, all of them (readEntries gives them a hundred at a time), by name
  function listFolder(folder) {
    const reader = folder.createReader();
    const all = [];
    return new Promise((resolve, reject) => {
      const next = () => reader.readEntries((batch) => {
        if (batch.length) {
          all.push(...batch);
          next();
        } else {
          resolve(all.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)));
        }
      }, reject);
      next();
    });
  }

  // The photo entries of a dropped folder and of its subfolders (a class folder, or a data
  // folder of class folders); hidden files and what is not named as a photo are left out
  // (listing stops once more than `most` are found: a whole data set dropped is not walked)
  async function folderPhotos(folder, out, most) {
    for (const entry of await listFolder(folder)) {
      if (out.length > most) break;
      if (entry.name.startsWith(".")) continue;
      if (entry.isDirectory) await folderPhotos(entry, out, most);
      else if (PHOTO.test(entry.name)) out.push(entry);
    }
    return out;
  }

  function entryFile(entry) {
    return new Promise((resolve, reject) => entry.file(resolve, reject)).then((file) => {
      file.shownName = entry.fullPath.replace(/^\//, "");
      return file;
    }, () => ({ name: entry.fullPath.replace(/^\//, ""), error: UNREADABLE }));
  }

  // What a drop gave, as classify takes it: a file as it is, a folder as the photos in it
  // (at most FOLDER_PHOTOS in all), a folder with none as its own card saying so
  async function dropped(given) {
    const out = [];
    let room = FOLDER_PHOTOS;
    for (const item of given) {
      if (!item || !item.isDirectory) {
        out.push(item);
        continue;
      }
      say("reading the folder " + item.name + " ...");
      let photos;
      try {
        photos = await folderPhotos(item, [], room);
      } catch (e) {
        out.push({ name: item.name, error: "this folder cannot be read: drop the photos in it" });
        continue;
      }
      if (!photos.length) {
        out.push({ name: item.name, error: "a folder with no photo in it (JPEG, PNG, ...): " +
          "nothing to classify" });
        continue;
      }
      const taken = photos.slice(0, room);
      room -= taken.length;
      if (taken.length < photos.length) {
        const limit = "a drop takes at most " + FOLDER_PHOTOS + " photos";
        out.push({ name: item.name, error: taken.length
          ? "a folder of more than " + taken.length + " photos: the first " + taken.length +
            " are classified (" + limit + "; drop the others a few at a time)"
          : "a folder of photos, none classified (" + limit + ", taken by the folders " +
            "before it; drop it on its own)" });
      }
      for (const entry of taken) out.push(await entryFile(entry));
    }
    return out;
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
    const data = event.dataTransfer;
    if (!data.files.length) { // a link or text dragged from a page, not a file
      say("nothing to classify: drop photo files (a link or text from a page is not a file)",
        true);
      return;
    }
    // a folder is an entry of its own, taken now: the DataTransfer is emptied after the event
    // (as a File, a folder cannot be read, and fetch refused the whole request for it)
    let given = Array.from(data.items || []).filter((i) => i.kind === "file").map((i) => {
      const entry = i.webkitGetAsEntry ? i.webkitGetAsEntry() : null;
      return entry && entry.isDirectory ? entry : i.getAsFile();
    });
    if (!given.length) given = Array.from(data.files);
    dropped(given).then(classify).catch((e) => say("cannot read what was dropped: " + e, true));
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
