// Switchboard dashboard: live refresh (every 2 s) and actions without a page reload.
// The server renders every row and field; this script only swaps in fresh HTML and posts
// actions with the session's CSRF token (from <meta name="csrf-token">).
"use strict";

const POLL_MS = 2000;

function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
  message.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { message.hidden = true; }, 6000);
}

async function refresh(always) {
  // A tab nobody looks at costs the router nothing (a page of 10,000 tenants is sorted per poll).
  if (document.hidden && !always) return;
  const list = document.querySelector("table[data-poll]");
  const status = document.querySelector("#status[data-poll]");
  const target = list ? document.getElementById("rows") : status;
  const url = (list || status || {}).dataset?.poll;
  if (!url) return;
  try {
    const response = await fetch(url, {headers: {Accept: "application/json"},
                                       credentials: "same-origin"});
    if (response.status === 403) { location.href = "/dashboard/signin"; return; }
    if (!response.ok) return;
    const data = await response.json();
    target.innerHTML = data.html;
    if (data.state) {
      const badge = document.querySelector("h1 .badge");
      if (badge) { badge.textContent = data.state; badge.className = "badge " + data.state; }
    }
  } catch (error) {
    // The router may be restarting: the next poll tries again.
  }
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.matches(".actions form")) return;
  event.preventDefault();
  const button = form.querySelector("button");
  button.disabled = true;
  button.classList.add("busy");
  try {
    const response = await fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: {Accept: "application/json", "X-CSRF-Token": csrfToken(),
                "Content-Type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams(new FormData(form)),
    });
    const data = await response.json();
    say(response.ok ? data.message : data.error, !response.ok);
  } catch (error) {
    say("the router did not answer: " + error.message, true);
  } finally {
    button.classList.remove("busy");
    await refresh(true);
  }
});

if (document.querySelector("[data-poll]")) {
  setInterval(() => refresh(false), POLL_MS);
}
