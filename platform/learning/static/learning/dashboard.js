// Live updates of the learning dashboard's jobs table (templates/learning/dashboard.html).
// Plain JS, no build step. While a job on the page is unfinished it polls the jobs API
// (learning.api.ProjectJobListApi) every `pollSeconds` and updates state, progress, log and error in
// place; when one finishes (or an unfinished job appears that the page does not show) it reloads the
// page, so the model versions table and the charts show what the job did.

const data = JSON.parse(document.getElementById("learning-data").textContent);
const live = document.getElementById("jobs-live");
const unfinished = new Set(data.unfinished);
const period = Math.max(1, data.pollSeconds || 2) * 1000;

function field(row, name) {
  return row.querySelector(`[data-field="${name}"]`);
}

function setText(element, text) {
  if (element && element.textContent !== text) element.textContent = text;
}

// "2026-03-02T10:04:05.123Z" -> "03-02 10:04:05", as the server renders it (UTC).
function when(iso) {
  return iso ? iso.slice(5, 19).replace("T", " ") : "–";
}

function update(row, job) {
  const badge = field(row, "state");
  if (badge && !badge.classList.contains(job.state)) {
    badge.className = `badge ${job.state}`;
  }
  setText(badge, job.state);
  const percent = Math.round(job.progress);
  const bar = field(row, "progress-bar");
  if (bar && Number(bar.value) !== percent) bar.value = percent;
  setText(field(row, "progress"), `${percent}%`);
  setText(field(row, "started_at"), when(job.started_at));
  setText(field(row, "finished_at"), when(job.finished_at));
  setText(field(row, "attempts"), String(job.attempts));
  setText(field(row, "error"), job.error);
  const lines = job.log ? job.log.split("\n") : [];
  setText(field(row, "last-line"), lines.length ? lines[lines.length - 1] : "no log yet");
  const pre = field(row, "log");
  if (pre && pre.textContent !== job.log) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = job.log;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
}

async function poll() {
  if (document.hidden) {
    document.addEventListener("visibilitychange", poll, { once: true });
    return;
  }
  let jobs;
  try {
    const response = await fetch(data.jobsUrl, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    jobs = (await response.json()).results;
  } catch (error) {
    setText(live, `Live updates paused (${error.message}); trying again.`);
    setTimeout(poll, period * 3);
    return;
  }
  let reload = false;
  for (const job of jobs) {
    const row = document.querySelector(`tr[data-job="${job.id}"]`);
    if (!row) {
      reload ||= !job.finished; // started elsewhere (the periodic check, another admin)
      continue;
    }
    update(row, job);
    reload ||= job.finished && unfinished.has(job.id);
  }
  if (reload) {
    setText(live, "A job finished: reloading…");
    window.location.reload();
    return;
  }
  setText(live, `Live: updated ${new Date().toLocaleTimeString()}.`);
  setTimeout(poll, period);
}

if (unfinished.size) setTimeout(poll, period);
