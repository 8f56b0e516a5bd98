// The cloud's JSON API with the login cookie (same origin). A 401 sends
// the reader to /login and back here after.

export class ApiError extends Error {
  constructor(status, msg) {
    super(msg);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && path !== "/api/v1/login") {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, "log in first");
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

/** Every device the caller sees, page by page. */
export async function allDevices() {
  let out = [];
  let after = "";
  for (;;) {
    const page = await api("GET", "/api/v1/devices?limit=10000" + (after ? "&after=" + encodeURIComponent(after) : ""));
    out = out.concat(page);
    if (page.length < 10000) return out;
    after = page[page.length - 1].login_code;
  }
}
