"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error");
  err.textContent = "";
  const resp = await fetch("/login", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-Edgepilot-Dashboard": "1"},
    body: JSON.stringify({token: document.getElementById("token").value}),
  });
  if (resp.ok) {
    location.href = "/";
    return;
  }
  const body = await resp.json().catch(() => ({}));
  err.textContent = body.error || `refused (${resp.status})`;
});
